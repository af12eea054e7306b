#!/usr/bin/env python3
"""kiln-data's streaming path against Hugging Face `datasets`, back to back on one machine.

    python3 -m pip install -r tools/fixtures/requirements-data.txt
    CARGO_TARGET_DIR=target cargo build --release -p kiln-data --example pipeline_throughput
    python3 tools/bench_data_side_by_side.py 100000 1000000 --repeat 2

For each size the messages file is written once (kiln's generator, seed 0) in /tmp/kiln-bench,
then each repeat runs kiln's `pipeline_throughput` and `tools/bench_datasets.py` on the same file
and the same tokenizer: SmolLM2-135M-Instruct's, as transformers builds it from the GGUF in
kiln's cache (written once next to it; kiln-models builds the same one). Each run is timed from
outside and its whole process tree's memory is sampled every 50 ms (datasets' `num_proc`
workers included; RSS summed over processes counts the pages they share once per process, PSS
does not); `uptime`'s load is recorded before and after, since the machine may be shared.
records/s is the records over the program's own time (kiln: open → last row; datasets:
load_dataset → packed, imports excluded). Raw lines go to bench-results/data-<date>.jsonl.
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("KILN_CACHE", pathlib.Path.home() / ".cache" / "kiln"))
GGUF = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER = CACHE / "SmolLM2-135M-Instruct.tokenizer.json"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
KILN = TARGET / "release" / "examples" / "pipeline_throughput"


def smollm2_tokenizer():
    """SmolLM2's tokenizer.json, written from the GGUF by transformers on first use."""
    if not TOKENIZER.exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(CACHE), gguf_file=GGUF.name)
        tok.backend_tokenizer.save(str(TOKENIZER))
    return TOKENIZER


def load():
    return os.getloadavg()


def tree_memory(root):
    """(RSS, PSS) summed over `root` and its descendants: RSS counts pages shared by forked
    workers once per process, PSS splits them between the processes sharing them."""
    rss = pss = 0
    for p in [root] + root.children(recursive=True):
        try:
            m = p.memory_full_info()
            rss, pss = rss + m.rss, pss + m.pss
        except psutil.Error:
            pass
    return rss, pss


def run(cmd):
    """Runs `cmd`; returns its stdout, wall seconds and its process tree's peak RSS and PSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        try:
            rss, pss = tree_memory(root)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{out}")
    return out, wall, peak_rss / 1e6, peak_pss / 1e6


def parse(out):
    """The `records … secs … records/s …` line both programs print."""
    line = next(l for l in out.splitlines() if l.startswith("records "))
    pairs = re.findall(r"([a-z/]+) ([0-9.]+)", line)
    return {k: float(v) for k, v in pairs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="+", type=int)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not KILN.exists():
        sys.exit(f"{KILN} missing: cargo build --release -p kiln-data --example pipeline_throughput")
    tok = smollm2_tokenizer()
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    log = results / f"data-{datetime.datetime.now():%Y%m%d-%H%M%S}.jsonl"
    data_dir = pathlib.Path("/tmp/kiln-bench")
    data_dir.mkdir(exist_ok=True)
    rows = []
    for n in args.sizes:
        data = data_dir / f"messages-{n}.jsonl"
        sides = {
            "kiln": [str(KILN), str(data), str(n), "--tokenizer", str(tok)],
            "datasets": [sys.executable, str(ROOT / "tools" / "bench_datasets.py"), str(data),
                         "--tokenizer", str(tok)],
        }
        if not data.exists():  # kiln's example writes it (seed 0) before timing anything
            run(sides["kiln"])
        for rep in range(args.repeat):
            got = {}
            for side, cmd in sides.items():
                before = load()
                out, wall, rss, pss = run(cmd)
                after = load()
                got[side] = dict(parse(out), wall=wall, peak_rss_mb=rss, peak_pss_mb=pss,
                                 load_before=before, load_after=after)
                line = {**got[side], "records": n, "repeat": rep, "side": side}
                with log.open("a") as f:
                    f.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)
            k, d = got["kiln"], got["datasets"]
            if k["tokens"] != d["tokens"]:
                sys.exit(f"token counts differ: kiln {k['tokens']} datasets {d['tokens']}")
            rows.append((n, rep, k, d))
    print(f"\n{'records':>9} {'run':>3} {'side':<9}{'records/s':>11}{'secs':>8}{'wall':>8}"
          f"{'peak RSS MB':>13}{'peak PSS MB':>13}  load 1-min before → after")
    for n, rep, k, d in rows:
        for side, r in (("kiln", k), ("datasets", d)):
            print(f"{n:>9} {rep:>3} {side:<9}{r['records/s']:>11.0f}{r['secs']:>8.1f}"
                  f"{r['wall']:>8.1f}{r['peak_rss_mb']:>13.0f}{r['peak_pss_mb']:>13.0f}  "
                  f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}")
        print(f"{'':>14}ratio kiln/datasets: {k['records/s'] / d['records/s']:.2f}x records/s, "
              f"{d['wall'] / k['wall']:.2f}x wall")
    print(f"\nraw results: {log}")


if __name__ == "__main__":
    main()
