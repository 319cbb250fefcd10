#!/usr/bin/env bash
# The README's main command: on a fresh machine with this repository, fetch
# SmolLM2-135M-Instruct (if absent), generate arithmetic word problems (disjoint train and
# test sets), measure the model on the test set, fine-tune it with GMT on CPU for a few
# minutes, and measure again.
#
#   scripts/demo.sh                     # results in target/demo
#
# Environment: GMT_DEMO_DIR (output, default target/demo), GMT_DEMO_STEPS (default 32),
# GMT_BACKEND (default cpu), GMT_BIN (an already built gmt binary; default: build release).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${GMT_DEMO_DIR:-target/demo}"
steps="${GMT_DEMO_STEPS:-32}"
backend="${GMT_BACKEND:-cpu}"

echo "== fetching SmolLM2-135M-Instruct (once; cached in ~/.cache/gmt)"
model="$(scripts/fetch-smollm2.sh)"
if [ -n "${GMT_BIN:-}" ]; then
  gmt="$GMT_BIN"
else
  echo "== building gmt (release; ~15 minutes on 2 cores the first time)"
  cargo build --release --locked -p gmt-cli
  gmt=target/release/gmt
fi

rm -rf "$out"
"$gmt" make-data --output "$out/data" --train 600 --test 40 --seed 1
eval_args=(--backend "$backend" --data "$out/data/test.jsonl" --task gsm8k --max-new-tokens 40 --json)

echo "== before fine-tuning (held-out test set)"
before="$("$gmt" eval --model "$model" "${eval_args[@]}")"
echo "$before"

echo "== fine-tuning with GMT (mask ratio 0.2) for $steps steps"
"$gmt" train --backend "$backend" --model "$model" \
  --data "$out/data/train.jsonl" --eval-data "$out/data/test.jsonl" --output "$out/run" \
  --max-steps "$steps" --micro-batch-size 4 --max-seq-len 128 --packing \
  --lr 1e-4 --warmup-steps 2 --schedule cosine --mask-ratio 0.2 --eval-every 8

echo "== after fine-tuning (same held-out test set)"
after="$("$gmt" eval --model "$out/run/final" "${eval_args[@]}")"
echo "$after"

python3 - "$before" "$after" <<'PY'
import json, sys
b, a = (json.loads(x) for x in sys.argv[1:3])
print()
print(f"                 before    after")
print(f"eval loss      {b['loss']:8.4f} {a['loss']:8.4f}")
print(f"accuracy       {100*b['accuracy']:7.1f}% {100*a['accuracy']:7.1f}%   ({b['correct']}/{b['total']} -> {a['correct']}/{a['total']})")
PY
echo "metrics: $out/run/metrics.jsonl   plot: $out/run/plot.svg"
