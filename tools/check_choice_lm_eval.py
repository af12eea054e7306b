#!/usr/bin/env python3
"""Check kiln's multiple-choice scores on a real model against lm-evaluation-harness.

    cargo run --release --example eval -- --choice --data data/tutor_choice.jsonl --output-dir OUT
    python3 tools/check_choice_lm_eval.py --gguf ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data data/tutor_choice.jsonl --kiln OUT/choice.json

transformers dequantizes the same GGUF to float32; lm-eval 0.4.13's HFLM scores every
(context, " " + choice) request; the script prints the largest |Δ log-likelihood| and whether
acc / acc_norm predictions agree. Versions: tools/fixtures/requirements-eval.txt.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--kiln", required=True, type=Path, help="choice.json written by the eval example")
    ap.add_argument("--tol", type=float, default=2e-3)
    a = ap.parse_args()
    d, f = str(a.gguf.parent), a.gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    items = [json.loads(l) for l in a.data.read_text().splitlines() if l.strip()]
    kiln = json.loads(a.kiln.read_text())["a"]["items"]
    worst, agree = 0.0, True
    for item, k in zip(items, kiln):
        reqs = [Instance("loglikelihood", {}, (item["context"], " " + c), i) for i, c in enumerate(item["choices"])]
        lls = np.array([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
        mine = np.array([x["logprob"] for x in k["logliks"]])
        worst = max(worst, float(np.abs(lls - mine).max()))
        norm = np.array([len(c) for c in item["choices"]], dtype=float)
        agree &= int(np.argmax(lls)) == k["pred"] and int(np.argmax(lls / norm)) == k["pred_norm"]
    print(json.dumps({"items": len(items), "max_abs_diff_loglik": worst, "predictions_agree": bool(agree)}))
    return 0 if worst <= a.tol and agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
