#!/usr/bin/env python3
"""Loads a reward-model adapter written by kiln with PEFT and writes PEFT's scores beside it.

Command (from the repository root; versions pinned in tools/fixtures/requirements-trl.txt):

    KILN_WRITE_GOLDEN=1 cargo test -p kiln-train --test reward kiln_written   # writes the adapter
    python3 tools/check_reward_adapter.py fixtures/reward/kiln_written
    cargo test -p kiln-train --test reward kiln_written                       # compares

The directory holds kiln's `adapter_config.json` (task_type SEQ_CLS, modules_to_save ["score"])
and `adapter_model.safetensors` (LoRA tensors and `base_model.model.score.weight`). The script
loads fixtures/reward/model with `AutoModelForSequenceClassification`, applies the adapter with
`PeftModel.from_pretrained`, checks that the head PEFT runs is the file's `score.weight`, and
writes `peft_scores.json`: the pooled scores on the batch of fixtures/reward/scores.json.
Versions used: torch 2.15.0, transformers 5.23.0, peft 0.21.2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(adapter: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        REPO / "fixtures" / "reward" / "model", dtype=torch.float32, attn_implementation="eager"
    )
    model = PeftModel.from_pretrained(base, adapter).eval()
    head = load_file(str(adapter / "adapter_model.safetensors"))["base_model.model.score.weight"]
    ran = model.base_model.model.score.modules_to_save["default"].weight
    assert torch.equal(ran.detach(), head), "PEFT did not load kiln's score.weight"
    batch = json.loads((REPO / "fixtures" / "reward" / "scores.json").read_text())
    ids = torch.tensor(batch["input_ids"])
    mask = torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask).logits
    (adapter / "peft_scores.json").write_text(json.dumps({"scores": scores.tolist()}, indent=1) + "\n")
    print(adapter, scores.flatten().tolist())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
