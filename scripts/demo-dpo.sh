#!/usr/bin/env bash
# DPO + GMT on a real model, on the CPU, in a few minutes: SmolLM2-135M-Instruct trained on
# arithmetic preference pairs (chosen = the worked answer, rejected = the same answer with one
# arithmetic slip), measured before and after on held-out pairs (how often the model prefers
# the right answer) and on held-out problems (answer accuracy by greedy generation).
#
#   scripts/demo-dpo.sh                 # results in target/demo-dpo
#
# Environment: GMT_DEMO_DIR (output, default target/demo-dpo), GMT_DEMO_STEPS (default 24),
# GMT_BACKEND (default cpu), GMT_BIN (an already built gmt binary; default: build release).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${GMT_DEMO_DIR:-target/demo-dpo}"
steps="${GMT_DEMO_STEPS:-24}"
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
"$gmt" make-data --output "$out/data" --train 400 --test 40 --seed 2 --pairs
pairs_eval=(eval --backend "$backend" --data "$out/data/test_pairs.jsonl" --objective dpo
            --reference "$model" --beta 0.1 --max-seq-len 128 --json)
answers_eval=(eval --backend "$backend" --data "$out/data/test.jsonl" --task gsm8k
              --max-new-tokens 40 --json)

echo "== before DPO (held-out pairs and problems)"
pairs_before="$("$gmt" "${pairs_eval[@]}" --model "$model")"
answers_before="$("$gmt" "${answers_eval[@]}" --model "$model")"
echo "$pairs_before"; echo "$answers_before"

# A resident reference: for a run this short, one reference forward per micro-batch costs
# less than a pass over all the pairs first (the default, `precompute`, wins for longer runs).
echo "== DPO with GMT (mask ratio 0.2) for $steps steps"
"$gmt" train --backend "$backend" --model "$model" --objective dpo --beta 0.1 \
  --reference-logps resident \
  --data "$out/data/train.jsonl" --eval-data "$out/data/test_pairs.jsonl" --output "$out/run" \
  --max-steps "$steps" --micro-batch-size 4 --max-seq-len 128 \
  --lr 2e-5 --warmup-steps 2 --schedule cosine --mask-ratio 0.2 --eval-every 8

echo "== after DPO (the same held-out pairs and problems)"
pairs_after="$("$gmt" "${pairs_eval[@]}" --model "$out/run/final")"
answers_after="$("$gmt" "${answers_eval[@]}" --model "$out/run/final")"
echo "$pairs_after"; echo "$answers_after"

python3 - "$pairs_before" "$pairs_after" "$answers_before" "$answers_after" <<'PY'
import json, sys
pb, pa, ab, aa = (json.loads(x) for x in sys.argv[1:5])
print()
print(f"                                   before    after")
print(f"DPO loss (held-out pairs)        {pb['loss']:8.4f} {pa['loss']:8.4f}")
print(f"reward accuracy                  {100*pb['rewards/accuracy']:7.1f}% {100*pa['rewards/accuracy']:7.1f}%")
print(f"prefers chosen (log p)           {100*pb['logps/accuracy']:7.1f}% {100*pa['logps/accuracy']:7.1f}%")
print(f"reward margin                    {pb['rewards/margin']:8.4f} {pa['rewards/margin']:8.4f}")
print(f"answer accuracy                  {100*ab['accuracy']:7.1f}% {100*aa['accuracy']:7.1f}%   ({ab['correct']}/{ab['total']} -> {aa['correct']}/{aa['total']})")
PY
echo "metrics: $out/run/metrics.jsonl   plot: $out/run/plot.svg"
