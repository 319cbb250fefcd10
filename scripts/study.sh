#!/usr/bin/env bash
# The GMT study of docs/results.md: SmolLM2-135M-Instruct on the CPU, swept with `gmt sweep`.
#
#   scripts/study.sh arithmetic      # docs/study/arithmetic.toml (core comparison + variants)
#   scripts/study.sh gsm8k           # docs/study/gsm8k.toml
#   scripts/study.sh all
#
# Resumable: rerun the same command to skip finished runs and resume the unfinished one from
# its newest checkpoint (Ctrl-C stops with a checkpoint). Results: docs/study/<sweep>/
# (results.jsonl, summary.md, summary.svg, and each finished run's settings, metrics and result,
# meant to be committed: a sweep spans sittings and machines; checkpoints and final models are
# ignored by git). Commit only finished runs (those holding result.json): a run without a
# checkpoint is started afresh, so a half-run's files are noise. Model and data: target/study/. Environment: GMT_BIN (a built gmt; default: build
# release), and any `gmt sweep` flags after the sweep name (e.g. --max-runs 2, --list).
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:?usage: scripts/study.sh arithmetic|gsm8k|all [gmt sweep flags]}"
shift
mkdir -p target/study
model="$(scripts/fetch-smollm2.sh)"
ln -sf "$model" target/study/SmolLM2-135M-Instruct.gguf
if [ -n "${GMT_BIN:-}" ]; then
  gmt="$GMT_BIN"
else
  cargo build --release --locked -p gmt-cli
  gmt=target/release/gmt
fi
if [ ! -f target/study/arithmetic-data/test.jsonl ]; then
  "$gmt" make-data --output target/study/arithmetic-data --train 600 --test 100 --seed 1
fi
case "$which" in
  all) sweeps=(arithmetic gsm8k) ;;
  arithmetic | gsm8k) sweeps=("$which") ;;
  *) echo "unknown sweep: $which (arithmetic, gsm8k or all)" >&2; exit 2 ;;
esac
for sweep in "${sweeps[@]}"; do
  "$gmt" sweep --config "docs/study/$sweep.toml" "$@"
done
