#!/usr/bin/env python3
"""Checks that a Hugging Face directory written by kiln (`Pretrained::save_hf`, e.g.
`runs/census_qa/merged/`) loads in transformers with kiln's logits.

    python3 tools/check_hf_export.py runs/census_qa/merged [runs/census_qa/merged_kiln_logits.safetensors]

kiln's logits (tensor `logits` [1, t, vocab] and `input_ids` [1, t]) are in
`<dir>_kiln_logits.safetensors` beside the directory (not inside it: the directory is what
people upload), or in the file given second. Prints the max |Δ| and exits 1 above 2e-3 (the bound
of kiln's SmolLM2-vs-transformers test; float32 rounding over 30 layers gives ~1e-4) or when the
argmax differs at any position.
Pinned versions: tools/fixtures/requirements.txt.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1].rstrip("/")
ref = load_file(sys.argv[2] if len(sys.argv) > 2 else f"{path}_kiln_logits.safetensors")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path)
ids = ref["input_ids"].round().long()  # stored as f32 (exact below 2^24)
with torch.no_grad():
    logits = model(input_ids=ids).logits
diff = (logits - ref["logits"]).abs().max().item()
rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
same_argmax = bool((logits.argmax(-1) == ref["logits"].argmax(-1)).all())
ok = diff <= 2e-3 and same_argmax
print(f"{'OK' if ok else 'FAIL'} {path}: max |transformers - kiln| = {diff:.3e} over {list(logits.shape)}, same argmax: {same_argmax}; "
      f"chat template renders {len(rendered)} chars")
sys.exit(0 if ok else 1)
