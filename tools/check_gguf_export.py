#!/usr/bin/env python3
"""Checks the GGUF files kiln writes (`Pretrained::save_gguf`) with the Python readers: gguf-py's
`GGUFReader` (names, ggml types, shapes, metadata) and transformers'
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (logits on kiln's fixed ids, compared
with kiln's own). Writes transformers' last-position logits to
`fixtures/gguf_export/transformers_logits.json`, which `crates/models/tests/gguf_export.rs` checks
kiln against (<= 1e-4) without Python.

    python3 -m pip install -r tools/fixtures/requirements-gguf.txt
    KILN_GGUF_EXPORT_OUT=/tmp/kiln-gguf cargo test -p kiln-models --features cpu \
        --test gguf_export round_trips
    python3 tools/check_gguf_export.py /tmp/kiln-gguf

Exits 1 when a file does not read as expected or transformers' logits differ from kiln's by
more than 1e-4 (float32 rounding over two tiny layers is ~1e-6).
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fixtures" / "gguf_export" / "transformers_logits.json"

# Types each file type may hold for 2-d tensors (Q4_K_M's fallbacks for rows of 64 included).
ALLOWED = {
    "F16": {Q.F16},
    "Q8_0": {Q.Q8_0},
    "Q4_K_M": {Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16},
}
FTYPE = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}


def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def check_file(path: Path, ft: str) -> tuple[list[str], dict]:
    """gguf-py's view of the file: problems found and a type histogram."""
    problems = []
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    if field(r, "general.file_type") != FTYPE[ft]:
        problems.append(f"general.file_type {field(r, 'general.file_type')}")
    if field(r, "general.alignment") != 32 or field(r, "general.quantization_version") != 2:
        problems.append("general.alignment / quantization_version")
    for key in ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base",
                "context_length"]:
        if field(r, f"{arch}.{key}") is None:
            problems.append(f"missing {arch}.{key}")
    names = {t.name: t for t in r.tensors}
    emb = names.get("token_embd.weight")
    tokens = field(r, "tokenizer.ggml.tokens")
    if emb is None or tokens is None or len(tokens) != int(emb.shape[1]):
        problems.append("token_embd.weight rows != tokenizer.ggml.tokens")
    types = Counter()
    n_layers = field(r, f"{arch}.block_count")
    for t in r.tensors:
        types[t.tensor_type.name] += 1
        if not (t.name.startswith("blk.") or t.name in {"token_embd.weight", "output_norm.weight", "output.weight"}):
            problems.append(f"unexpected tensor {t.name}")
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            problems.append(f"{t.name} beyond {n_layers} layers")
        one_d = len([d for d in t.shape if d > 1]) <= 1 or t.name.endswith(("norm.weight", ".bias"))
        if one_d and t.tensor_type != Q.F32:
            problems.append(f"{t.name}: 1-d tensor stored as {t.tensor_type.name}")
        if not one_d and t.tensor_type not in ALLOWED[ft]:
            problems.append(f"{t.name}: {t.tensor_type.name} in a {ft} file")
        # gguf-py dequantizes every tensor to the element count its shape says.
        if gguf.quants.dequantize(t.data, t.tensor_type).size != int(np.prod(t.shape)):
            problems.append(f"{t.name}: dequantized size")
    return problems, dict(types)


def main() -> int:
    src = Path(sys.argv[1])
    kiln = json.loads((src / "kiln_logits.json").read_text())
    ids = torch.tensor([kiln["ids"]])
    result = {"transformers": transformers.__version__, "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
              "torch": torch.__version__, "ids": kiln["ids"], "cases": {}}
    ok = True
    for key, kiln_last in sorted(kiln["kiln_last_logits"].items()):
        ft = key.rsplit("-", 1)[1]
        path = src / f"{key}.gguf"
        problems, types = check_file(path, ft)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        last = logits[-1].numpy()
        diff = float(np.abs(last - np.array(kiln_last, dtype=np.float32)).max())
        good = not problems and diff <= 1e-4
        ok &= good
        print(f"{'OK  ' if good else 'FAIL'} {key}: max |transformers - kiln| (last position) = {diff:.2e}; "
              f"types {types}; {'; '.join(problems) or 'gguf-py: names, types, shapes, metadata as expected'}")
        result["cases"][key] = {
            "max_abs_diff_vs_kiln": diff,
            "tensor_types": types,
            "last_logits": [float(f"{x:.8g}") for x in last.tolist()],
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
