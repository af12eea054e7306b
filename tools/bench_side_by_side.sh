#!/usr/bin/env bash
# Runs ../shared/bench/pytorch_peft_baseline.py and kiln's `bench` example on the same model file,
# back to back, mode by mode, and prints the kiln/PyTorch ratios.
#
#   tools/bench_side_by_side.sh [MODES] [THREADS]        # default: infer,lora,full 2
#
# kiln is run with the default CPU backend (target/release) and, when it has been built with
#   CARGO_TARGET_DIR=target-openblas cargo build --release --features openblas --example bench
# also with OpenBLAS. Needs python3 with torch, transformers, peft, gguf
# (tools/fixtures/requirements.txt) and the model in kiln's cache (tools/fetch_model.sh).
# Raw results go to bench-results/<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
MODES=${1:-infer,lora,full}
THREADS=${2:-2}
BASELINE=${BASELINE:-../shared/bench/pytorch_peft_baseline.py}
# MODEL=path/to/file.gguf picks another model (e.g. tools/fetch_gemma3.sh's Gemma 3 270M).
if [ -z "${MODEL:-}" ]; then
  tools/fetch_model.sh >&2
  MODEL=${KILN_CACHE:-$HOME/.cache/kiln}/SmolLM2-135M-Instruct.Q4_1.gguf
fi
OUT=bench-results/$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench-results
cargo build --release --example bench >/dev/null
BINS=("ndarray:target/release/examples/bench")
[ -x target-openblas/release/examples/bench ] && BINS+=("openblas:target-openblas/release/examples/bench")
for mode in ${MODES//,/ }; do
  echo "== $mode: PyTorch+PEFT ($THREADS threads)" >&2
  python3 "$BASELINE" --model "$MODEL" --threads "$THREADS" --modes "$mode" \
    | sed 's/^/{"side":"pytorch","line":/; s/$/}/' >> "$OUT"
  for entry in "${BINS[@]}"; do
    label=${entry%%:*}; bin=${entry#*:}
    echo "== $mode: kiln ($label)" >&2
    RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$bin" --mode "$mode" --model "$MODEL" \
      | sed -n 's/^RESULT //p' | sed "s/^/{\"side\":\"kiln-$label\",\"line\":/; s/\$/}/" >> "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
torch, kiln = {}, {}
for r in rows:
    line = r["line"]
    if r["side"] == "pytorch":
        for m in ("sgemm", "lora", "full", "infer"):
            if m in line:
                torch[m] = line[m]
    else:
        kiln.setdefault(r["side"], {})[line["mode"]] = line
def row(name, k, t, higher_better=True):
    ratio = k / t if higher_better else t / k
    print(f"{name:<48}{k:>12.2f}{t:>12.2f}{ratio:>8.2f}")
for side, res in kiln.items():
    print(f"\n{side} vs PyTorch+PEFT (ratio > 1: kiln better)")
    print(f"{'metric':<48}{'kiln':>12}{'pytorch':>12}{'ratio':>8}")
    for mode in ("lora", "full"):
        if mode in res and mode in torch:
            row(f"{mode}: training tokens/s (4x256)", res[mode]["tokens_per_s"], torch[mode]["tokens_per_s"])
            row(f"{mode}: peak RSS MB", res[mode]["peak_rss_mb"], torch[mode]["peak_rss_mb"], False)
    if "infer" in res and "infer" in torch:
        k, t = res["infer"], torch["infer"]
        row("infer: forward tokens/s (1x256)", k["forward_tokens_per_s"], t["forward_tokens_per_s"])
        row("infer: decode tokens/s (excl. prefill)", k["decode_tokens_per_s_excl_prefill"], t["decode_tokens_per_s_excl_prefill"])
    if "lora" in res and "full" in res:
        print(f"kiln LoRA step / kiln full step: {res['lora']['median_step_s'] / res['full']['median_step_s']:.2f}")
print(f"\nraw results: {sys.argv[1]}")
PY
