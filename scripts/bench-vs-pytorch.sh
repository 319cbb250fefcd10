#!/usr/bin/env bash
# gmt against PyTorch + Transformers on the same machine, in one sitting, on the same model:
# SmolLM2-135M-Instruct exported from its GGUF file to a Hugging Face directory that both sides
# load. Each side runs every mode in its own process (peak RSS is per process):
#   sft, gmt-tensor, gmt-global   (one optimizer step per micro-batch of BATCH × SEQ tokens)
#   decode                        (greedy, DECODE_TOKENS=64 new tokens, batch 1 and
#                                  DECODE_BATCH=16, median of DECODE_STEPS=2 runs)
# gmt's side is gmt-bench's `train_profile` example; PyTorch's is
# ../shared/anchors/torch_train_step.py, run when `torch` and `transformers` import.
#
#   scripts/bench-vs-pytorch.sh          # BATCH=4 SEQ=128 STEPS=6 RATIO=0.3 by default
#   PYTHON=venv/bin/python scripts/bench-vs-pytorch.sh   # the Python that has torch
#   BACKENDS="flex ndarray" scripts/bench-vs-pytorch.sh  # also burn-ndarray
#
# Output: each figure as `side.mode.key=value` (side: gmt = burn's Flex, gmt's CPU backend;
# ndarray = burn-ndarray; torch), then the comparisons as `key=value`, among them sft_vs_pytorch
# (gmt's SFT tokens/s over PyTorch's) and gmt_vs_sft (gmt's GMT step time over its SFT step
# time); burn-ndarray's carry an `ndarray_` prefix. Ratios of tokens/s (sft_vs_pytorch, decode-b*_vs_pytorch)
# are better above 1; every other ratio divides times or memory, better below 1. Without
# PyTorch only gmt's own ratios are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

batch="${BATCH:-4}"
seq="${SEQ:-128}"
steps="${STEPS:-6}"
ratio="${RATIO:-0.3}"
decode_tokens="${DECODE_TOKENS:-64}"
decode_batch="${DECODE_BATCH:-16}"
decode_steps="${DECODE_STEPS:-2}"
anchor="${ANCHOR:-../shared/anchors/torch_train_step.py}"
python="${PYTHON:-python3}"
work=target/bench-vs-pytorch
mkdir -p "$work"
export CARGO_TERM_COLOR=never

echo "== machine"
echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "cores=$(nproc)"
date -u +"date=%Y-%m-%dT%H:%M:%SZ"

echo "== build (release)"
# One invocation, so that both share one feature resolution (and one build of burn).
cargo build --release --locked -p gmt-cli -p gmt-bench --features gmt-bench/profile \
  --bin gmt --example train_profile
gmt=target/release/gmt
profile=target/release/examples/train_profile

model_dir="$work/smollm2-hf"
if [ ! -f "$model_dir/model.safetensors" ]; then
  echo "== exporting SmolLM2-135M-Instruct from its GGUF file to $model_dir"
  "$gmt" export --model "$(scripts/fetch-smollm2.sh)" --output "$model_dir" --force
fi

have_torch=false
if "$python" -c 'import torch, transformers' 2>/dev/null; then
  have_torch=true
else
  echo "PyTorch or Transformers does not import in $python: gmt's side only" >&2
fi

results="$work/results.txt"
: > "$results"
# run SIDE MODE BATCH SEQ: one process of one side; its key=value lines go to $results as
# SIDE.MODE.key=value (MODE names the decode batch, e.g. decode-b16).
run() {
  local side="$1" mode="$2" b="$3" s="$4" label="$2" n="$steps"
  if [ "$mode" = decode ]; then label="decode-b$b"; n="$decode_steps"; fi
  echo "== $side $label (batch $b, seq $s)" >&2
  local out
  if [ "$side" = gmt ]; then
    out="$(GMT_BENCH_BACKEND=flex "$profile" "$model_dir" "$b" "$s" "$n" "$mode" "$ratio")"
  elif [ "$side" = ndarray ]; then
    out="$(GMT_BENCH_BACKEND=ndarray "$profile" "$model_dir" "$b" "$s" "$n" "$mode" "$ratio")"
  else
    out="$("$python" "$anchor" "$model_dir" "$b" "$s" "$n" "$mode" "$ratio")"
  fi
  echo "$out" | grep '=' | grep -v ' ' | sed "s/^/$side.$label./" | tee -a "$results"
}

sides=()
for backend in ${BACKENDS:-flex}; do
  case "$backend" in
    flex) sides+=(gmt) ;;
    ndarray) sides+=(ndarray) ;;
    *) echo "unknown backend in BACKENDS: $backend (flex or ndarray)" >&2; exit 2 ;;
  esac
done
$have_torch && sides+=(torch)
for side in "${sides[@]}"; do
  for mode in sft gmt-tensor gmt-global; do
    run "$side" "$mode" "$batch" "$seq"
  done
  run "$side" decode 1 "$decode_tokens"
  run "$side" decode "$decode_batch" "$decode_tokens"
done

echo "== comparisons"
python3 - "$results" <<'EOF'
import sys
values = {}
for line in open(sys.argv[1]):
    key, _, value = line.strip().partition("=")
    try:
        values[key] = float(value)
    except ValueError:
        pass

def get(key):
    return values.get(key)

def ratio(name, num, den):
    a, b = get(num), get(den)
    if a is not None and b:
        print(f"{name}={a / b:.3f}")

def compare(side, prefix):
    ratio(f"{prefix}sft_vs_pytorch", f"{side}.sft.tokens_per_s", "torch.sft.tokens_per_s")
    ratio(f"{prefix}gmt_vs_sft", f"{side}.gmt-tensor.step_s_median", f"{side}.sft.step_s_median")
    ratio(f"{prefix}gmt_global_vs_sft", f"{side}.gmt-global.step_s_median",
          f"{side}.sft.step_s_median")
    ratio(f"{prefix}gmt_optimizer_vs_adamw", f"{side}.gmt-tensor.optimizer_s_median",
          f"{side}.sft.optimizer_s_median")
    for phase in ("forward", "backward"):
        ratio(f"{prefix}{phase}_vs_pytorch", f"{side}.sft.{phase}_s_median",
              f"torch.sft.{phase}_s_median")
    ratio(f"{prefix}adamw_vs_pytorch", f"{side}.sft.optimizer_s_median",
          "torch.sft.optimizer_s_median")
    for scope in ("gmt-tensor", "gmt-global"):
        ratio(f"{prefix}{scope}_step_vs_pytorch", f"{side}.{scope}.step_s_median",
              f"torch.{scope}.step_s_median")
    ratio(f"{prefix}gmt_optimizer_vs_pytorch", f"{side}.gmt-tensor.optimizer_s_median",
          "torch.gmt-tensor.mask_optimizer_s_median")
    ratio(f"{prefix}peak_rss_vs_pytorch", f"{side}.sft.peak_rss_gib", "torch.sft.peak_rss_gib")
    for label in sorted({k.split(".")[1] for k in values if k.startswith(f"{side}.decode-")}):
        ratio(f"{prefix}{label}_vs_pytorch", f"{side}.{label}.decode_tokens_per_s",
              f"torch.{label}.decode_tokens_per_s")

# PyTorch's GMT step: its mask and its AdamW, as gmt's one optimizer call does both.
for scope in ("gmt-tensor", "gmt-global"):
    mask, opt = get(f"torch.{scope}.mask_s_median"), get(f"torch.{scope}.optimizer_s_median")
    if mask is not None and opt is not None:
        values[f"torch.{scope}.mask_optimizer_s_median"] = mask + opt
compare("gmt", "")
compare("ndarray", "ndarray_")
EOF
