#!/usr/bin/env bash
# Serving side by side, back to back on one machine: kiln's `serve` example and
# `transformers serve` (continuous batching, bf16 and f32) on the same SmolLM2-135M-Instruct
# weights, each at 1 and 32 concurrent streaming chat clients (tools/serve_load.py).
#
#   bash tools/bench_serve_side_by_side.sh HF_DIR [ADAPTER_DIR]
#
# HF_DIR: SmolLM2 as a transformers directory (`python tools/bench_trl_dpo.py --hf-from-gguf
# ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf --model HF_DIR`: the GGUF dequantized by
# transformers' own loader, with the `architectures` `transformers serve` requires).
# ADAPTER_DIR: a PEFT LoRA adapter of SmolLM2 (default: runs/census_qa/adapter, which
# `census_qa` writes), served twice under two names to measure requests spread over adapters.
# Needs the release `serve` example (`cargo build --release --features serve --example serve`)
# and `transformers[serving]==5.23.0` in $PYTHON (default: ~/.cache/kiln/venv-bench/bin/python).
# Prints one JSON line per run and a table; SECONDS_PER_LEVEL (default 30) sets each level.
set -euo pipefail
cd "$(dirname "$0")/.."
hf=${1:?usage: bench_serve_side_by_side.sh HF_DIR [ADAPTER_DIR]}
adapter=${2:-runs/census_qa/adapter}
py=${PYTHON:-$HOME/.cache/kiln/venv-bench/bin/python}
gguf=${KILN_MODEL:-$HOME/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf}
serve=${SERVE:-${CARGO_TARGET_DIR:-target}/release/examples/serve}
secs=${SECONDS_PER_LEVEL:-30}
port=18180
out=$(mktemp)
pid=
trap 'rm -f "$out" "$out.log"; [ -n "$pid" ] && kill "$pid" 2>/dev/null' EXIT

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512|amx)' | sort | tr '\n' ' ')"

# wait_up PORT PID: until the server answers, failing if it exits first.
wait_up() {
    for _ in $(seq 240); do
        # /health: `transformers serve` answers /v1/models with a 500 when the model is a path.
        curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$out.log" >&2; return 1; }
        sleep 1
    done
    echo "server on port $1 did not start" >&2
    return 1
}

# run LABEL MODELS LOAD_FLAGS -- SERVER COMMAND...
run() {
    local label=$1 models=$2 flags=$3
    shift 4
    port=$((port + 1))
    "$@" --port "$port" >"$out.log" 2>&1 &
    pid=$!
    wait_up "$port" "$pid"
    for c in 1 32; do
        # shellcheck disable=SC2086
        python3 tools/serve_load.py --url "http://127.0.0.1:$port" --clients "$c" \
            --seconds "$secs" --max-tokens 32 --models "$models" $flags |
            grep '^{' | sed "s/^{/{\"server\": \"$label\", /" | tee -a "$out"
    done
    echo "{\"server\": \"$label\", \"peak_rss_mb\": $(($(grep VmHWM /proc/$pid/status | awk '{print $2}') / 1024))}" | tee -a "$out"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

kiln=("$serve" --model "$gguf" --quantize stored --max-batch 32 --max-queue 128 --cache-mib 0)
run "kiln bf16, held bf16 weights" base "" -- "${kiln[@]}" --precision bf16 --bf16-weights
run "kiln bf16, held bf16 weights, no prefix cache" base "" -- "${kiln[@]}" --precision bf16 \
    --bf16-weights --prefix-cache-mib 0
run "kiln bf16, held bf16 weights, 2 adapters" a,b "" -- "${kiln[@]}" --precision bf16 \
    --bf16-weights --adapter "a=$adapter" --adapter "b=$adapter"
run "kiln f32" base "" -- "${kiln[@]}"
export HF_HUB_OFFLINE=1  # a local directory: no Hub lookups (they hang offline)
tf=("$(dirname "$py")/transformers" serve --continuous-batching --host 127.0.0.1)
run "transformers serve --continuous-batching --dtype bfloat16" "$hf" --lenient-end -- \
    "${tf[@]}" --dtype bfloat16 "$hf"
run "transformers serve --continuous-batching (f32)" "$hf" --lenient-end -- "${tf[@]}" "$hf"

python3 - "$out" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    r = rows.setdefault(d["server"], {})
    if "clients" in d:
        r[d["clients"]] = d
    else:
        r["rss"] = d["peak_rss_mb"]
print("| server | 1 client tok/s | 32 clients tok/s | 32 / 1 | TTFT p50 / p99 at 32 | peak RSS MB |")
print("|---|---|---|---|---|---|")
for name, r in rows.items():
    one, many = r[1]["tokens_per_s"], r[32]["tokens_per_s"]
    print(f"| {name} | {one:.1f} | {many:.1f} | {many / one:.2f}x | "
          f"{r[32]['ttft_p50_s']:.2f} s / {r[32]['ttft_p99_s']:.2f} s | {r['rss']} |")
EOF
