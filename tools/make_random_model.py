#!/usr/bin/env python3
"""Random-weight checkpoints with the real shapes of named architectures, for memory and time
benchmarks of kiln (never for quality: the weights are noise, the model says nothing).

    python3 -m venv ~/.cache/kiln/venv-models
    ~/.cache/kiln/venv-models/bin/pip install -r tools/requirements-models.txt   # gguf==0.19.0 numpy==2.4.6
    tools/fetch_model.sh                                   # SmolLM2's GGUF: its tokenizer is reused
    PY=~/.cache/kiln/venv-models/bin/python
    $PY tools/make_random_model.py --arch gemma2-2b  --format gguf-q4_0 --out ~/.cache/kiln/random/gemma2-2b.Q4_0.gguf
    $PY tools/make_random_model.py --arch mistral-7b --format gguf-q4_k --out ~/.cache/kiln/random/mistral-7b.Q4_K.gguf
    $PY tools/make_random_model.py --arch phi3-mini  --format safetensors-bf16 --out ~/.cache/kiln/random/phi3-mini-bf16
    cargo run --release --example score -- --model ~/.cache/kiln/random/gemma2-2b.Q4_0.gguf --text "hello world"

--arch: gemma2-2b (google/gemma-2-2b), phi3-mini (microsoft/Phi-3-mini-4k-instruct), mistral-7b
(mistralai/Mistral-7B-v0.1), smollm2-135m (HuggingFaceTB/SmolLM2-135M-Instruct): the sizes of their
config.json files (ARCHS below).
--format:
  gguf-q4_0, gguf-q4_k, gguf-q8_0, gguf-f16: one GGUF file in the architecture's own llama.cpp layout,
    as convert_hf_to_gguf.py writes it: `gemma2` (tensor names of llama.cpp's gemma2, RMSNorm weights
    stored as 1 + w, soft-caps, sliding window and key/value lengths in the metadata, tied head),
    `phi3` (fused `attn_qkv`, `ffn_up` holding gate then up, `rope.scaling.original_context_length`,
    `attention.sliding_window`), `llama` (Mistral and SmolLM2; q/k rows would be permuted by
    llama.cpp, which random weights need not mimic). Every 2-D weight, the embedding included, is
    in the format's type (llama-quantize would give `output.weight` Q6_K; `--pure` does as here);
    a weight whose rows are not a multiple of 256 falls back from Q4_K to Q5_0 as llama-quantize
    does. Norm weights are F32.
  safetensors-bf16: a Hugging Face directory: config.json (the real one; the token ids are
    SmolLM2's), model-0000N-of-0000M.safetensors shards of at most --shard-gb GB with
    model.safetensors.index.json, tokenizer.json and tokenizer_config.json.

The weights: quantized blocks are drawn directly as random valid blocks (random codes, f16 scales of
random magnitude and sign) so that weights have mean 0 and standard deviation about 0.02; f16 and bf16
weights are N(0, 0.02). Norms are 1 + N(0, 0.02) as the model applies them (Gemma's safetensors store
the w of its (1 + w), so near 0 there; its GGUF stores 1 + w, near 1). Tensors are written one at a
time in chunks of about 32 MB, so peak memory stays far below the file's size (a 7B Q4_0, about 4 GB,
takes a few minutes and some hundred MB).

The tokenizer is SmolLM2's real byte-level BPE (copied from `$KILN_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf`,
49,152 tokens), sized to the architecture's vocabulary so the embedding and head have their real
size (for Gemma they are 590 M of its 2.6 B parameters): padded with `<unused_N>` tokens (type
UNUSED, never produced by the merges) up to 256,000 for Gemma 2; cut to the first 32,000 / 32,064
tokens for Mistral / Phi-3, keeping only the merges whose parts and result survive the cut. So the
token ids and texts are SmolLM2's, not the real models'.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

STD = 0.02
CHUNK_BYTES = 32 << 20

# The real config.json of each architecture (token ids replaced by SmolLM2's tokenizer's).
ARCHS = {
    "gemma2-2b": {
        "gguf_arch": "gemma2",
        "name": "Gemma 2 2B (random weights)",
        "config": {
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
            "intermediate_size": 9216, "max_position_embeddings": 8192, "num_attention_heads": 8,
            "num_hidden_layers": 26, "num_key_value_heads": 4, "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
            "tie_word_embeddings": True, "vocab_size": 256000,
        },
    },
    "phi3-mini": {
        "gguf_arch": "phi3",
        "name": "Phi 3 Mini 4k Instruct (random weights)",
        "config": {
            "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
            "attention_bias": False, "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
            "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
            "intermediate_size": 8192, "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096, "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
            "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047,
            "tie_word_embeddings": False, "vocab_size": 32064,
        },
    },
    "mistral-7b": {
        "gguf_arch": "llama",
        "name": "Mistral 7B v0.1 (random weights)",
        "config": {
            "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
            "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
            "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000,
        },
    },
    "smollm2-135m": {
        "gguf_arch": "llama",
        "name": "SmolLM2 135M Instruct (random weights)",
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
            "attention_dropout": 0.0, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
            "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
            "max_position_embeddings": 8192, "mlp_bias": False, "num_attention_heads": 9,
            "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
            "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 100000.0,
            "tie_word_embeddings": True, "vocab_size": 49152,
        },
    },
}
# SmolLM2's tokenizer: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2.
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def tensors(arch):
    """[(gguf name, hf name, shape as (out, in) or (n,), kind)] with kind in matrix/norm."""
    c, g = ARCHS[arch]["config"], ARCHS[arch]["gguf_arch"]
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c.get("head_dim", d // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = [("token_embd.weight", "model.embed_tokens.weight", (v, d), "matrix")]
    for i in range(c["num_hidden_layers"]):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        if g == "phi3":
            layer = [("attn_qkv", "self_attn.qkv_proj", (q + 2 * kv, d)),
                     ("attn_output", "self_attn.o_proj", (d, q)),
                     ("ffn_up", "mlp.gate_up_proj", (2 * f, d)),
                     ("ffn_down", "mlp.down_proj", (d, f))]
        else:
            layer = [("attn_q", "self_attn.q_proj", (q, d)), ("attn_k", "self_attn.k_proj", (kv, d)),
                     ("attn_v", "self_attn.v_proj", (kv, d)), ("attn_output", "self_attn.o_proj", (d, q)),
                     ("ffn_gate", "mlp.gate_proj", (f, d)), ("ffn_up", "mlp.up_proj", (f, d)),
                     ("ffn_down", "mlp.down_proj", (d, f))]
        if g == "gemma2":
            norms = [("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                     ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm")]
        else:
            norms = [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")]
        out += [(f"{b}{gn}.weight", f"{h}{hn}.weight", shape, "matrix") for gn, hn, shape in layer]
        out += [(f"{b}{gn}.weight", f"{h}{hn}.weight", (d,), "norm") for gn, hn in norms]
    out.append(("output_norm.weight", "model.norm.weight", (d,), "norm"))
    if not c["tie_word_embeddings"]:
        out.append(("output.weight", "lm_head.weight", (v, d), "matrix"))
    return out


# ---- random values and blocks -------------------------------------------------------------------

def random_bytes(rng, n):
    return rng.bit_generator.random_raw(-(-n // 8)).view(np.uint8)[:n]


def block_scales(rng, n, code_std):
    """f16 scales of n blocks: |d| = STD / code_std times U(0.75, 1.25), random sign (cancels the
    codes' half-step offset), as little-endian bytes (n, 2)."""
    mag = STD / code_std * rng.uniform(0.75, 1.25, n)
    sign = np.where(random_bytes(rng, n) & 1, -1.0, 1.0)
    return (mag * sign).astype("<f2").view(np.uint8).reshape(n, 2)


def q4_0_blocks(rng, n):
    # d (f16), 16 bytes of 4-bit codes q: w = (q - 8) d, q - 8 uniform on -8..7 (std 4.61)
    return np.concatenate([block_scales(rng, n, 4.61), random_bytes(rng, n * 16).reshape(n, 16)], axis=1)


def q5_0_blocks(rng, n):
    # d, 4 bytes of high bits, 16 bytes of low nibbles: w = (q - 16) d, q uniform on 0..31 (std 9.23)
    return np.concatenate([block_scales(rng, n, 9.23), random_bytes(rng, n * 20).reshape(n, 20)], axis=1)


def q8_0_blocks(rng, n):
    # d, 32 int8 codes: w = q d, q uniform on -128..127 (std 73.9)
    return np.concatenate([block_scales(rng, n, 73.9), random_bytes(rng, n * 32).reshape(n, 32)], axis=1)


def q4_k_blocks(rng, n):
    """Super-blocks of 256: d, dmin (f16), 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes
    of 4-bit codes. w = d·sc·q − dmin·m; with m = sc and dmin = 7.5 d, w = d·sc·(q − 7.5): mean 0,
    std d·sc·4.61."""
    sc = (32 + random_bytes(rng, n * 8) % 32).reshape(n, 8).astype(np.uint8)  # 32..63
    d = STD / (4.61 * 47.5) * rng.uniform(0.75, 1.25, n)
    head = np.stack([d, 7.5 * d], axis=1).astype("<f2").view(np.uint8).reshape(n, 4)
    # ggml's get_scale_min_k4 packing, with m = sc
    s = np.empty((n, 12), np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((sc[:, 4:8] & 15) << 4)
    return np.concatenate([head, s, random_bytes(rng, n * 128).reshape(n, 128)], axis=1)


QUANTS = {  # type name: (block size, bytes per block, generator)
    "Q4_0": (32, 18, q4_0_blocks),
    "Q5_0": (32, 22, q5_0_blocks),
    "Q8_0": (32, 34, q8_0_blocks),
    "Q4_K": (256, 144, q4_k_blocks),
}


def matrix_type(fmt, cols):
    t = {"gguf-q4_0": "Q4_0", "gguf-q4_k": "Q4_K", "gguf-q8_0": "Q8_0", "gguf-f16": "F16"}[fmt]
    if t == "Q4_K" and cols % 256:
        return "Q5_0"  # llama-quantize's fallback for rows that are not whole super-blocks
    return t


def row_chunks(rows, row_bytes):
    step = max(1, CHUNK_BYTES // row_bytes)
    for r in range(0, rows, step):
        yield min(step, rows - r)


def matrix_bytes(rng, ty, shape):
    """Chunks of the matrix's bytes in GGUF type ty (rows of shape[1] values)."""
    rows, cols = shape
    if ty in ("F16", "BF16"):
        for n in row_chunks(rows, cols * 2):
            x = rng.standard_normal(n * cols, dtype=np.float32) * STD
            if ty == "F16":
                yield x.astype("<f2").view(np.uint8)
            else:  # bf16: the top half of the f32, rounded to nearest even
                u = x.view(np.uint32)
                yield ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").view(np.uint8)
        return
    block, size, gen = QUANTS[ty]
    for n in row_chunks(rows, cols // block * size):
        yield gen(rng, n * cols // block).reshape(-1)


def norm_values(rng, n, centre):
    return (centre + STD * rng.standard_normal(n)).astype("<f4")


# ---- tokenizer ----------------------------------------------------------------------------------

def smollm2_gguf():
    cache = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
    path = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        sys.exit(f"{path} is missing: run tools/fetch_model.sh")
    return path


def tokenizer_fields(vocab):
    """SmolLM2's tokenizer.* metadata {key: (value, type, sub type)}, its vocabulary sized to vocab."""
    import gguf
    r = gguf.GGUFReader(smollm2_gguf())
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer."):
            sub = f.types[1] if len(f.types) > 1 else None
            fields[k] = (f.contents(), f.types[0], sub)
    tokens, types, merges = (fields[k][0] for k in
                             ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"))
    if vocab >= len(tokens):
        extra = vocab - len(tokens)
        tokens = tokens + [f"<unused_{i}>" for i in range(extra)]
        types = types + [int(gguf.TokenType.UNUSED)] * extra
    else:
        tokens, types = tokens[:vocab], types[:vocab]
        kept = set(tokens)
        merges = [m for m in merges if all(p in kept for p in m.split(" ")) and m.replace(" ", "") in kept]
    for k, v in (("tokens", tokens), ("token_type", types), ("merges", merges)):
        key = f"tokenizer.ggml.{k}"
        fields[key] = (v,) + fields[key][1:]
    return fields


def tokenizer_json(fields):
    """tokenizer.json of the byte-level BPE kiln builds from these fields (GPT-2's split regex, as
    for `tokenizer.ggml.pre` = smollm) and tokenizer_config.json."""
    tokens = fields["tokenizer.ggml.tokens"][0]
    types = fields["tokenizer.ggml.token_type"][0]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(tokens) if types[i] == 3]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False}, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": fields["tokenizer.ggml.merges"][0]},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokens[1], "eos_token": tokens[2],
              "pad_token": tokens[2], "unk_token": tokens[0], "add_bos_token": False,
              "chat_template": fields.get("tokenizer.chat_template", (None,))[0]}
    return tok, config


# ---- writers ------------------------------------------------------------------------------------

def write_gguf(arch, fmt, out, seed):
    import gguf
    spec = ARCHS[arch]
    c, g = spec["config"], spec["gguf_arch"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, g, use_temp_file=False)
    w.add_name(spec["name"])
    w.add_type("model")
    hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_vocab_size(c["vocab_size"])
    if g == "gemma2":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
        w.add_final_logit_softcapping(c["final_logit_softcapping"])
        w.add_sliding_window(c["sliding_window"])
    else:
        w.add_rope_dimension_count(hd)
    if g == "phi3":
        w.add_rope_scaling_orig_ctx_len(c["original_max_position_embeddings"])
        w.add_sliding_window(c["sliding_window"])
    file_type = {"gguf-f16": gguf.LlamaFileType.MOSTLY_F16, "gguf-q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                 "gguf-q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "gguf-q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M}[fmt]
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, (value, vtype, sub) in tokenizer_fields(c["vocab_size"]).items():
        w.add_key_value(key, value, vtype, sub)

    plan = []
    for name, _, shape, kind in tensors(arch):
        if kind == "norm":
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
            plan.append((name, "F32", shape))
            continue
        ty = matrix_type(fmt, shape[1])
        if ty == "F16":
            w.add_tensor_info(name, shape, np.dtype(np.float16), shape[0] * shape[1] * 2)
        else:
            block, size, _ = QUANTS[ty]
            byte_shape = (shape[0], shape[1] // block * size)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), byte_shape[0] * byte_shape[1],
                              raw_dtype=gguf.GGMLQuantizationType[ty])
        plan.append((name, ty, shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    # GGUFWriter.write_tensor_data wants a whole tensor in memory; this writes the same bytes
    # (its padding, then the data, then padding) chunk by chunk.
    fout = w.fout[0]
    centre = 1.0  # llama.cpp's gemma2 stores 1 + w: near 1 like the others
    for name, ty, shape in plan:
        ti = w.tensors[0].pop(name)
        w.write_padding(fout, fout.tell())
        written = 0
        chunks = [norm_values(rng, shape[0], centre).view(np.uint8)] if ty == "F32" else matrix_bytes(rng, ty, shape)
        for chunk in chunks:
            chunk.tofile(fout)
            written += chunk.nbytes
        assert written == ti.nbytes, (name, written, ti.nbytes)
        w.write_padding(fout, written)
        w.state = gguf.gguf_writer.WriterState.WEIGHTS
    w.close()


def safetensors_header(entries):
    """The JSON header (8-byte length + JSON padded with spaces to 8 bytes) of [(name, shape, nbytes)]."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, nbytes in entries:
        header[name] = {"dtype": "BF16" if len(shape) == 2 else "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(arch, out, seed, shard_gb):
    spec = ARCHS[arch]
    c = spec["config"]
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Norms as F32 (transformers casts on load); HF Gemma stores the w of (1 + w): near 0.
    centre = 0.0 if spec["gguf_arch"] == "gemma2" else 1.0
    entries = [(hf, shape, math.prod(shape) * (2 if len(shape) == 2 else 4), len(shape) == 2)
               for _, hf, shape, _ in tensors(arch)]
    shards, size = [[]], 0
    for e in entries:
        if shards[-1] and size + e[2] > shard_gb * 1e9:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e[2]
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(out / fname, "wb") as f:
            f.write(safetensors_header([(n, s, b) for n, s, b, _ in shard]))
            for name, shape, nbytes, is_matrix in shard:
                written = 0
                chunks = matrix_bytes(rng, "BF16", shape) if is_matrix else [norm_values(rng, shape[0], centre)]
                for chunk in chunks:
                    chunk.tofile(f)
                    written += chunk.nbytes
                assert written == nbytes
                weight_map[name] = fname
    total = sum(e[2] for e in entries)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {**c, **TOKEN_IDS, "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok, tok_config = tokenizer_json(tokenizer_fields(c["vocab_size"]))
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
    ap.add_argument("--format", required=True,
                    choices=["gguf-q4_0", "gguf-q4_k", "gguf-q8_0", "gguf-f16", "safetensors-bf16"])
    ap.add_argument("--out", required=True, help="the .gguf file, or the directory for safetensors-bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="safetensors shard size limit")
    a = ap.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    n = sum(math.prod(s) for _, _, s, _ in tensors(a.arch))
    print(f"{a.arch}: {n / 1e9:.3f} B parameters -> {a.out} ({a.format})", file=sys.stderr)
    if a.format == "safetensors-bf16":
        write_safetensors(a.arch, a.out, a.seed, a.shard_gb)
    else:
        write_gguf(a.arch, a.format, a.out, a.seed)


if __name__ == "__main__":
    main()
