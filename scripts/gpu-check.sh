#!/usr/bin/env bash
# GPU check, meant to finish in under 8 minutes on one H100 (CUDA driver present):
#   1. builds the cross-backend suite and the throughput benchmark in release,
#   2. runs the cross-backend suite on CUDA (and WGPU) against the CPU reference,
#   3. measures SmolLM2-135M training throughput (SFT and GMT) on CUDA and on WGPU with a
#      GPU-sized batch, printing tokens/s, the optimizer-step cost of mask selection and the
#      peak GPU memory seen by nvidia-smi.
#
#   scripts/gpu-check.sh            # BATCH=16 SEQ=512 STEPS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."

batch="${BATCH:-16}"
seq="${SEQ:-512}"
steps="${STEPS:-5}"
export CARGO_TERM_COLOR=never

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== build (release)"
cargo build --release --locked -p gmt-bench --features gpu --example train_throughput
cargo test --release --locked -p gmt-tests --features gmt-tests/cuda --test integration --no-run

echo "== cross-backend consistency: ndarray reference vs CUDA and WGPU"
GMT_TEST_CUDA=1 cargo test --release --locked -p gmt-tests --features gmt-tests/cuda --test integration cross_backend:: -- --nocapture --test-threads 1

# Samples the GPU's used memory every 100 ms while a command runs; prints the peak.
peak_memory() {
  local log; log="$(mktemp)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
  local sampler=$!
  "$@"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  echo "peak GPU memory: $(sort -n "$log" | tail -1) MiB"
  rm -f "$log"
}

for backend in cuda wgpu; do
  echo "== training throughput, SmolLM2-135M, $backend, batch $batch × $seq"
  peak_memory target/release/examples/train_throughput \
    --backend "$backend" --batch "$batch" --seq "$seq" --steps "$steps" --warmup 2
done

# Several GPUs: one data-parallel run over all of them against the same run on GPU 0 alone
# (the same steps: each device takes its share of the --grad-accum micro-batches); with
# Open MPI installed, also one rank per GPU under mpirun.
gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)"
if [ "$gpus" -ge 2 ]; then
  echo "== data-parallel: SmolLM2-135M on $gpus GPUs against 1"
  runs=(one all)
  if command -v mpirun >/dev/null; then
    cargo build --release --locked -p gmt-cli --features mpi
    runs+=(mpi)
  else
    cargo build --release --locked -p gmt-cli
  fi
  work="$(mktemp -d)"
  model="$(scripts/fetch-smollm2.sh)"
  target/release/gmt make-data --output "$work/data" --train 400 --test 20 --seed 1
  devices="$(seq -s, -f 'cuda:%g' 0 $((gpus - 1)))"
  for run in one:cuda:0 all:"$devices"; do
    name="${run%%:*}"; list="${run#*:}"
    /usr/bin/time -f "$name ($list): %e s" target/release/gmt train --model "$model" \
      --data "$work/data/train.jsonl" --output "$work/$name" --devices "$list" \
      --max-steps 8 --micro-batch-size 8 --grad-accum "$gpus" --max-seq-len 256 --packing \
      --lr 1e-4 --mask-ratio 0.3
  done
  if [ "${#runs[@]}" -eq 3 ]; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 /usr/bin/time -f "mpi ($gpus ranks): %e s" \
      mpirun --oversubscribe -np "$gpus" target/release/gmt train --model "$model" \
      --data "$work/data/train.jsonl" --output "$work/mpi" --backend cuda --distributed mpi \
      --max-steps 8 --micro-batch-size 8 --grad-accum "$gpus" --max-seq-len 256 --packing \
      --lr 1e-4 --mask-ratio 0.3
  fi
  python3 - "$work" "${runs[@]}" <<'PY'
import json, sys
runs = {n: [json.loads(l) for l in open(f"{sys.argv[1]}/{n}/metrics.jsonl")] for n in sys.argv[2:]}
for steps in zip(*runs.values()):
    print(f"step {steps[0]['step']}: " + ", ".join(
        f"{n} loss {s['loss']:.6f} kept {s['kept_fraction']:.4f}" for n, s in zip(runs, steps)))
PY
  rm -rf "$work"
fi
