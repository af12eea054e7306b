#!/usr/bin/env bash
# Runs every fuzz target of kiln for a while (default 10 minutes each; the normal test run gives
# each 3 seconds). Usage: tools/fuzz.sh [minutes per target]  (or KILN_FUZZ_MS=...).
# A failing case prints ARBTEST_SEED=0x...; replay it with
#   ARBTEST_SEED=0x... cargo test --release -p <crate> --test fuzz <target> -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
export KILN_FUZZ_MS="${KILN_FUZZ_MS:-$((minutes * 60 * 1000))}"
targets=(
  "kiln-models fuzz_gguf_reader"
  "kiln-models fuzz_safetensors_source"
  "kiln-models fuzz_config_json"
  "kiln-models fuzz_tokenizer_extras"
  "kiln-data fuzz_jsonl_reader"
  "kiln-data fuzz_csv_reader"
  "kiln-data fuzz_parquet_reader"
  "kiln-data fuzz_chat_template"
  "kiln-data fuzz_chat_template_loader"
)
status=0
for t in "${targets[@]}"; do
  read -r crate name <<<"$t"
  features=()
  [ "$crate" = kiln-models ] && features=(--features cpu)
  echo "== $crate $name for $((KILN_FUZZ_MS / 1000)) s"
  nice -n 15 cargo test --release -p "$crate" "${features[@]}" --test fuzz "$name" -- \
    --exact --nocapture >"/tmp/kiln-fuzz-$name.log" 2>&1 || status=1
  grep -E "fuzz target|ARBTEST_SEED|panicked|test result" "/tmp/kiln-fuzz-$name.log" || true
done
exit $status
