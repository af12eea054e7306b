#!/usr/bin/env bash
# DPO step, kiln against TRL, side by side on this machine: the same Hugging Face model directory,
# the same preference pairs (written by tools/bench_trl_dpo.py), batch 2 pairs, max_length 256,
# LoRA r 16 / alpha 32 on q, k, v, o, sigmoid loss, beta 0.1, no gradient checkpointing.
#
#   MODEL=/path/to/hf-dir PYTHON=python3 tools/bench_dpo_side_by_side.sh
#
# An HF directory from kiln's default GGUF: python3 tools/bench_trl_dpo.py --hf-from-gguf \
#   ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf --model /tmp/smollm2-hf
#
# TRL: median step time after 2 warmup steps (tools/bench_trl_dpo.py), with --precision f32 and
# autocast-bf16. kiln: the `dpo` example run for STEPS and STEPS+10 steps; a step's time is the
# difference of the two wall times over 10 (loading and the first steps cancel out); tokens per
# step from its metrics.jsonl; peak RSS from /usr/bin/time. Prints one JSON line per run.
#
# PRECOMPUTE=1: both sides with `precompute_ref_log_probs` (the reference log-probs of the whole
# dataset in one pass before training). TRL then runs no reference forward in its steps; kiln
# never does, but without the option its reference pass covers the micro-batches the run reads,
# so the STEPS+10 run computes 10 more of them and the difference counts one reference forward
# per step, as TRL's steps do; with it both of kiln's runs compute the same whole pass.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:?set MODEL to a Hugging Face model directory}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-3}
DATA=${DATA:-/tmp/kiln_dpo_bench_pairs.jsonl}
OUT=${OUT:-/tmp/kiln_dpo_bench}
PRECOMPUTE_FLAG=()
[ "${PRECOMPUTE:-0}" = 1 ] && PRECOMPUTE_FLAG=(--precompute-ref-log-probs)
cargo build --release --example dpo >/dev/null
"$PYTHON" tools/bench_trl_dpo.py --model "$MODEL" --write-data "$DATA"
grep -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo

kiln_run() { # precision steps -> "seconds max_rss_kb"
    rm -rf "$OUT"
    local log; log=$(mktemp)
    /usr/bin/time -f "%e %M" -o "$log" ${CARGO_TARGET_DIR:-target}/release/examples/dpo --model "$MODEL" --data "$DATA" \
        --output-dir "$OUT" --max-steps "$2" --batch-size 2 --max-seq-len 256 --lr 1e-6 \
        --beta 0.1 --precision "$1" "${PRECOMPUTE_FLAG[@]}" >/dev/null 2>&1
    cat "$log"; rm -f "$log"
}

for precision in f32 bf16; do
    read -r short _ < <(kiln_run "$precision" "$STEPS")
    read -r long rss < <(kiln_run "$precision" $((STEPS + 10)))
    tokens=$("$PYTHON" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; r=r[-10:]; print(sum(x['tokens'] for x in r)/len(r))" "$OUT/metrics.jsonl")
    "$PYTHON" -c "import json,sys; s=(float(sys.argv[2])-float(sys.argv[1]))/10; t=float(sys.argv[3]); print(json.dumps({'side':'kiln','precision':sys.argv[5],'precompute_ref_log_probs':sys.argv[6]=='1','step_s':round(s,3),'tokens_per_step':t,'tokens_per_s':round(t/s,1),'peak_rss_mb':round(int(sys.argv[4])/1024)}))" "$short" "$long" "$tokens" "$rss" "$precision" "${PRECOMPUTE:-0}"
done
for precision in f32 autocast-bf16; do
    "$PYTHON" tools/bench_trl_dpo.py --model "$MODEL" --data "$DATA" --precision "$precision" \
        --steps 8 --warmup 2 "${PRECOMPUTE_FLAG[@]}"
done
