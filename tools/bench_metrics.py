#!/usr/bin/env python3
"""Time sacrebleu and rouge-score on the 10,000 sentence pairs that `benches/metrics.rs` scores.

    tools/fixtures/.venv/bin/python tools/bench_metrics.py          # writes out/bench-metrics/pairs.tsv, times Python
    cargo bench --bench metrics                                     # times kiln-eval on the same file
    tools/fixtures/.venv/bin/python tools/bench_metrics.py --ratio  # prints Python / Rust ratios from criterion

(requirements: tools/fixtures/requirements-metrics.txt). The pairs are generated with the same
64-bit LCG recipe as the bench's fallback, so both sides score identical text.
"""
import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "out" / "bench-metrics" / "pairs.tsv"
WORDS = ["the", "of", "and", "to", "in", "model", "training", "data", "running", "results", "quickly", "is",
         "was", "a", "new", "language", "fine-tuning", "evaluation", "3.5", "1,234", "(see", "below)", "it's",
         "generalization", "connected", "happily", "we", "report", "scores", "on", "test", "set."]


def generate(n):
    state = 42
    M = (1 << 64) - 1

    def nxt():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & M
        return state >> 33

    lines = []
    for _ in range(n):
        length = 8 + nxt() % 25
        hyp = [WORDS[nxt() % len(WORDS)] for _ in range(length)]
        ref = [WORDS[nxt() % len(WORDS)] if nxt() % 4 == 0 else w for w in hyp]
        lines.append(f"{' '.join(hyp)}\t{' '.join(ref)}\n")
    return "".join(lines)


def timed(fn, repeat):
    """Best wall time and best CPU time (process_time) over `repeat` runs, and the value."""
    best, best_cpu, value = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, value


def python_times(hyps, refs, repeat):
    import sacrebleu
    from rouge_score import rouge_scorer
    r1 = [refs]
    out = {}
    out["corpus_bleu_13a"] = timed(lambda: sacrebleu.corpus_bleu(hyps, r1).score, repeat)
    out["sentence_bleu_13a"] = timed(lambda: [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)][0], repeat)
    out["corpus_chrf"] = timed(lambda: sacrebleu.corpus_chrf(hyps, r1).score, repeat)
    for stem, name in ((False, "rouge_1_2_L"), (True, "rouge_1_2_L_stem")):
        sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)

        def run():
            s = [sc.score(r, h) for h, r in zip(hyps, refs)]
            n = len(s)
            return (sum(x["rouge1"].fmeasure for x in s) / n, sum(x["rougeL"].fmeasure for x in s) / n)
        out[name] = timed(run, repeat)
    return out


def criterion_times():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    group = target / "criterion"
    found = {}
    for est in group.glob("metrics_*_pairs/*/new/estimates.json"):
        found[est.parent.parent.name] = json.loads(est.read_text())["mean"]["point_estimate"] / 1e9
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ratio", action="store_true", help="also read criterion results and print ratios")
    a = ap.parse_args()
    PAIRS.parent.mkdir(parents=True, exist_ok=True)
    PAIRS.write_text(generate(a.n), encoding="utf-8")
    hyps, refs = zip(*(line.split("\t") for line in PAIRS.read_text(encoding="utf-8").splitlines()))
    hyps, refs = list(hyps), list(refs)
    print(f"{len(hyps)} pairs written to {PAIRS}")
    py = python_times(hyps, refs, a.repeat)
    rust = criterion_times() if a.ratio else {}
    for name, (secs, cpu, value) in py.items():
        line = f"{name:20s} python wall {secs * 1000:9.1f} ms cpu {cpu * 1000:9.1f} ms  value {value}"
        if name in rust:
            line += f"  rust {rust[name] * 1000:8.2f} ms  ratio {secs / rust[name]:6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
