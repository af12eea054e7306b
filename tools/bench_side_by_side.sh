#!/usr/bin/env bash
# Runs ../shared/bench/pytorch_peft_baseline.py with every --precision (f32, autocast-bf16, bf16,
# qlora-nf4) and kiln's `bench` example with --precision f32 and bf16 on the same model file,
# back to back, mode by mode, and prints one markdown table (issue #19's layout): a column per
# kiln precision and per PyTorch precision, and kiln's best over PyTorch's best per row.
#
#   tools/bench_side_by_side.sh [MODES] [THREADS]        # default: infer,lora,full 2
#
# Environment:
#   MODEL=path.gguf        another model file (default: SmolLM2-135M-Instruct Q4_1 in kiln's cache;
#                          e.g. tools/fetch_gemma3.sh's Gemma 3 270M)
#   PYTHON=path/to/python  the interpreter with the baseline's packages (default python3):
#                          python3 -m venv ~/.cache/kiln/venv-bench
#                          ~/.cache/kiln/venv-bench/bin/pip install -r tools/requirements-bench.txt
#                          (torch 2.15.0, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2, ...)
#   PRECISIONS="f32 bf16"  PyTorch precisions to run (default: all four)
#   KILN_PRECISIONS="f32 bf16"  kiln's columns; `bf16+nf4` adds `--quantize nf4` (QLoRA: the base
#                          quantized at load as bitsandbytes does) to that precision
#   BASELINE=path          the baseline script (default ../shared/bench/pytorch_peft_baseline.py,
#                          beside the main checkout when run from a git worktree)
#
# kiln's `infer` runs each precision too (`--precision bf16`: bf16 products,
# CausalLm::set_precision); a `+quantize` column runs with its precision. kiln is run with the default CPU backend
# and, when it has been built with
#   CARGO_TARGET_DIR=target-openblas cargo build --release --features openblas --example bench
# also with OpenBLAS. The model must be in kiln's cache (tools/fetch_model.sh).
# Raw results (one JSON line per run, the baseline's own line under "line") are appended to
# bench-results/<date>-<time>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
MODES=${1:-infer,lora,full}
THREADS=${2:-2}
# ../shared beside the checkout, or beside the main checkout when this is a git worktree.
if [ -z "${BASELINE:-}" ]; then
  BASELINE=../shared/bench/pytorch_peft_baseline.py
  common=$(git rev-parse --git-common-dir 2>/dev/null || true)
  [ -f "$BASELINE" ] || [ -z "$common" ] || BASELINE=$common/../../shared/bench/pytorch_peft_baseline.py
fi
[ -f "$BASELINE" ] || { echo "no baseline at $BASELINE: set BASELINE" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
PRECISIONS=${PRECISIONS:-f32 autocast-bf16 bf16 qlora-nf4}
KILN_PRECISIONS=${KILN_PRECISIONS:-f32 bf16}
if [ -z "${MODEL:-}" ]; then
  tools/fetch_model.sh >&2
  MODEL=${KILN_CACHE:-$HOME/.cache/kiln}/SmolLM2-135M-Instruct.Q4_1.gguf
fi
OUT=bench-results/$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench-results
cargo build --release --example bench >/dev/null
BINS=("ndarray:${CARGO_TARGET_DIR:-target}/release/examples/bench")
[ -x target-openblas/release/examples/bench ] && BINS+=("openblas:target-openblas/release/examples/bench")
CPU_FLAGS=$(grep -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
for mode in ${MODES//,/ }; do
  for precision in $PRECISIONS; do
    echo "== $mode: PyTorch+PEFT $precision ($THREADS threads)" >&2
    "$PYTHON" "$BASELINE" --model "$MODEL" --threads "$THREADS" --modes "$mode" --precision "$precision" \
      | sed "s/^/{\"side\":\"pytorch\",\"precision\":\"$precision\",\"line\":/; s/\$/}/" >> "$OUT" \
      || echo "PyTorch $mode $precision failed" >&2
  done
  for entry in "${BINS[@]}"; do
    label=${entry%%:*}; bin=${entry#*:}
    for precision in $KILN_PRECISIONS; do
      quantize=stored; [ "$precision" != "${precision#*+}" ] && quantize=${precision#*+}
      echo "== $mode: kiln ($label, $precision)" >&2
      RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$bin" --mode "$mode" --model "$MODEL" \
        --precision "${precision%%+*}" --quantize "$quantize" \
        | sed -n 's/^RESULT //p' \
        | sed "s/^/{\"side\":\"kiln-$label\",\"precision\":\"$precision\",\"line\":/; s/\$/}/" >> "$OUT" \
        || echo "kiln $mode $precision failed" >&2
    done
  done
done
"$PYTHON" - "$OUT" "$MODEL" "$THREADS" "$CPU_FLAGS" "$PRECISIONS" "$KILN_PRECISIONS" <<'PY'
import json, os, sys
out, model, threads, flags, torch_prec, kiln_prec = sys.argv[1:7]
rows = [json.loads(l) for l in open(out)]
torch_cols = [f"PyTorch {p}" for p in torch_prec.split()]
kiln_sides = sorted({r["side"] for r in rows if r["side"] != "pytorch"})
kiln_cols = [f"{s.replace('kiln-ndarray', 'kiln')} {p}" for s in kiln_sides for p in kiln_prec.split()]
res = {}  # column -> mode -> result
for r in rows:
    line = r["line"]
    if r["side"] == "pytorch":
        col = f"PyTorch {r['precision']}"
        for m in ("lora", "full", "infer"):
            if m in line:
                res.setdefault(col, {})[m] = line[m]
    else:
        col = f"{r['side'].replace('kiln-ndarray', 'kiln')} {r['precision']}"
        res.setdefault(col, {})[line["mode"]] = line

def get(col, mode, key):
    m = res.get(col, {}).get(mode)
    if not isinstance(m, dict):
        return None
    if "error" in m:
        return "err"
    return m.get(key)

metrics = [  # (row label, mode, key, higher is better)
    ("LoRA step tokens/s (4×256)", "lora", "tokens_per_s", True),
    ("full step tokens/s (4×256)", "full", "tokens_per_s", True),
    ("forward tokens/s (1×256)", "infer", "forward_tokens_per_s", True),
    ("decode tokens/s (64 new, excl. prefill)", "infer", "decode_tokens_per_s_excl_prefill", True),
    ("LoRA peak RSS MB", "lora", "peak_rss_mb", False),
]
cols = kiln_cols + torch_cols
print(f"\nmodel {os.path.basename(model)}, {threads} threads; CPU flags: {flags.strip()}\n")
print("| metric | " + " | ".join(cols) + " | kiln best / PyTorch best |")
print("|---" * (len(cols) + 2) + "|")
for label, mode, key, higher in metrics:
    vals = {c: get(c, mode, key) for c in cols}
    if all(v is None for v in vals.values()):
        continue
    def cell(v):
        return "-" if v is None else v if isinstance(v, str) else f"{v:,.1f}"
    pick = max if higher else min
    k = [v for c, v in vals.items() if c in kiln_cols and isinstance(v, (int, float))]
    t = [v for c, v in vals.items() if c in torch_cols and isinstance(v, (int, float))]
    ratio = f"{pick(k) / pick(t):.2f}" if k and t else "-"
    if not higher and ratio != "-":
        ratio += " (lower: kiln smaller)"
    print(f"| {label} | " + " | ".join(cell(vals[c]) for c in cols) + f" | {ratio} |")
for mode in ("lora", "full", "infer"):
    parts = [f"{c}: {get(c, mode, 'gflops_per_s')} GFLOP/s ({get(c, mode, 'fraction_of_peak')} of "
             f"{get(c, mode, 'peak_gflops')})" for c in kiln_cols if get(c, mode, "gflops_per_s") is not None]
    if parts:
        print(f"\nkiln {mode} products: " + "; ".join(parts))
errors = [f"{c} {m}" for c in cols for m in ("lora", "full", "infer") if get(c, m, "tokens_per_s") == "err"]
if errors:
    print("\nfailed runs (see the raw file): " + ", ".join(errors))
print(f"\nraw results: {out}")
PY
