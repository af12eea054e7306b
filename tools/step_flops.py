#!/usr/bin/env python3
"""Matrix-product FLOPs of one kiln training step (fused CPU path), LoRA against full fine-tuning.

    python3 tools/step_flops.py                 # SmolLM2-135M, batch 4 x 256, LoRA r=16 on 7 projections

Counts what kiln's fused step multiplies (crates/models/src/backprop/): every projection's forward
and input gradient, the weight gradients only in full fine-tuning, the tied head on the counted
rows (forward, input gradient, and the embedding gradient in full fine-tuning), attention in
64-query blocks over the keys each block can see (2 products forward, 5 backward: the
probabilities are recomputed), and LoRA's six thin products per adapter. Elementwise work, AdamW
and memory traffic are not counted: the ratio printed is the one both steps would have if
products were all they did at equal speed.
"""
import argparse

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, default=576)
p.add_argument("--ffn", type=int, default=1536)
p.add_argument("--layers", type=int, default=30)
p.add_argument("--heads", type=int, default=9)
p.add_argument("--kv-heads", type=int, default=3)
p.add_argument("--vocab", type=int, default=49152)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--block", type=int, default=64)
a = p.parse_args()

d, f, hd = a.hidden, a.ffn, a.hidden // a.heads
kv = a.kv_heads * hd
tokens = a.batch * a.seq
counted = a.batch * (a.seq - 1)
# (in, out) of q, k, v, o, gate, up, down
proj = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]

layer_params = sum(i * o for i, o in proj)
product = 2 * layer_params * tokens * a.layers  # one pass over every projection
head = 2 * a.vocab * d * counted  # one product with the tied embedding
# keys seen per block of queries (causal): block * (i + 1) for block i
keys = sum(min(a.seq, a.block * (i + 1)) for i in range(-(-a.seq // a.block)))
attn_product = 2 * a.block * hd * keys * a.batch * a.heads
attention = 7 * attn_product * a.layers
# xA and uB forward; du = dy Bᵀ, dx += du Aᵀ, dA, dB backward: 3 · r · (in + out) MACs per token
adapters = 3 * 2 * tokens * a.rank * sum(i + o for i, o in proj) * a.layers

lora = 2 * product + 2 * head + attention + adapters
full = 3 * product + 3 * head + attention
G = 1e9
print(f"projections, one pass   {product / G:8.1f} GFLOP (forward; again for dX; again for dW in full FT)")
print(f"tied head, one product  {head / G:8.1f} GFLOP (logits; dh; dE in full FT)")
print(f"attention (7 products)  {attention / G:8.1f} GFLOP")
print(f"LoRA adapters (6 each)  {adapters / G:8.1f} GFLOP")
print(f"LoRA step               {lora / G:8.1f} GFLOP")
print(f"full fine-tuning step   {full / G:8.1f} GFLOP")
print(f"LoRA / full             {lora / full:8.3f}")
print(f"LoRA / full, adapters free {(lora - adapters) / full:5.3f}")
