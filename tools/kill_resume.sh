#!/usr/bin/env bash
# kill -9 at random moments, then `--resume`, until the run finishes: the final adapter must be
# byte-identical to an uninterrupted run's (issue #23: "kill -9 ... always resumed to
# byte-identical weights: keep that").
#
#   tools/kill_resume.sh [KILLS] [MODEL]      # default 20 kills, kiln's default SmolLM2
#   FULL=1 tools/kill_resume.sh 10            # full fine-tuning: 1.6 GB checkpoints, so kills
#                                             # land in checkpoint writes
#
# The run: `sft` on the tutor data, LoRA r=16 with dropout 0.1 (so the RNG state must resume
# too), 16 steps of 2 x 128 tokens, a checkpoint every step (keep 2), so many kills land in a
# checkpoint write. Each kill waits a random 0.5 s to MAX_WAIT s (default: the uninterrupted
# run's duration) after the process starts. Prints one line
# per kill (step reached, whether a checkpoint was being written) and exits 1 on any difference.
# Needs a release build: `cargo build --release --example sft`.
set -euo pipefail
KILLS=${1:-20}
MODEL=${2:-}
FULL=${FULL:-0}
MAX_WAIT=${MAX_WAIT:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SFT=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/sft
[ -x "$SFT" ] || { echo "build first: cargo build --release --example sft" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

EXTRA=()
if [ "$FULL" = 1 ]; then
  STEPS=6 ADAPTER="" EXTRA=(--full) KEEP=1
else
  KEEP=2 STEPS=16 ADAPTER='[lora]
r = 16
lora_alpha = 32
lora_dropout = 0.1
target_modules = ["q_proj", "v_proj"]'
fi
cat > "$WORK/run.toml" <<EOF
model = "$MODEL"
micro_batch_size = 2
max_steps = $STEPS
seed = 3
$ADAPTER
[data]
train = ["$ROOT/data/tutor.jsonl"]
max_seq_len = 128
[optimizer]
lr = 5e-4
[save]
every = 1
keep_last = $KEEP
EOF

run() { "$SFT" --config "$WORK/run.toml" --output-dir "$1" "${EXTRA[@]}" "${@:2}" > "$1.log" 2>&1; }

echo "reference run (uninterrupted)"
t0=$(date +%s.%N)
run "$WORK/ref"
# Kills wait up to the reference run's duration, so they land anywhere in a run.
MAX_WAIT=${MAX_WAIT:-$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')}
echo "reference run took $MAX_WAIT s"
ART=$([ "$FULL" = 1 ] && echo trained/trained.safetensors || echo adapter/adapter_model.safetensors)
want=$(sha256sum "$WORK/ref/$ART" | cut -d' ' -f1)

out="$WORK/killed"
kills=0 in_write=0 fresh=1
while [ "$kills" -lt "$KILLS" ]; do
  if [ "$fresh" = 1 ]; then
    rm -rf "$out"
    args=()
    fresh=0
  else
    args=(--resume)
  fi
  "$SFT" --config "$WORK/run.toml" --output-dir "$out" "${EXTRA[@]}" "${args[@]}" > "$out.log" 2>&1 &
  pid=$!
  sleep "$(awk -v r="$RANDOM" -v m="$MAX_WAIT" 'BEGIN { printf "%.2f", 0.5 + (m - 0.5) * r / 32767 }')"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    writing=$(find "$out/checkpoints" -maxdepth 1 -name '.tmp-*' 2>/dev/null | head -1 || true)
    if [ -n "$writing" ]; then in_write=$((in_write + 1)); fi
    last=$(ls "$out/checkpoints" 2>/dev/null | grep '^step-' | tail -1 || true)
    echo "kill $kills: latest checkpoint ${last:-none}${writing:+, during a checkpoint write}"
  else
    wait "$pid" || { echo "run failed:"; tail -5 "$out.log"; exit 1; }
    # The run finished before the kill: compare, then start a fresh run for the next kills.
    got=$(sha256sum "$out/$ART" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "DIFFERENT weights after resumes: $got vs $want"; exit 1; }
    echo "finished after resumes: weights identical"
    fresh=1
  fi
done
# Finish the last interrupted run.
if [ "$fresh" = 0 ]; then
  run "$out" --resume
  got=$(sha256sum "$out/$ART" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "DIFFERENT weights after resumes: $got vs $want"; exit 1; }
  echo "finished after resumes: weights identical"
fi
echo "OK: $kills kills ($in_write during a checkpoint write), every resumed run byte-identical to the reference"
