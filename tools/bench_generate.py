"""The transformers side of sampled generation speed (GRPO's generation step: one prompt
sampled N times in one batch), against kiln's `generate --num-return-sequences N`.

    ~/.cache/kiln/venv-bench/bin/python tools/bench_generate.py --model HF_DIR \
        --prompt "What is the capital of Italy?" --num-return-sequences 8 --max-new-tokens 64 \
        --dtype bf16

HF_DIR: SmolLM2 as a transformers directory (`tools/bench_trl_dpo.py --hf-from-gguf`). Every
sequence runs to --max-new-tokens (`min_new_tokens` = `max_new_tokens`, as kiln's
`--ignore-eos`), sampling at temperature 1 with no top-k/top-p cut, the prompt wrapped in the
chat template as a user message. Prints one JSON line: the median of --runs timed runs after one
untimed run, and the CPU's flags. Pinned: torch 2.15, transformers 5.23 (tools/requirements-bench.txt).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="What is the capital of Italy?")
    ap.add_argument("--num-return-sequences", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["f32", "bf16", "autocast-bf16"], default="bf16")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=False)
    n, m = args.num_return_sequences, args.max_new_tokens

    def once(seed):
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                      enabled=args.dtype == "autocast-bf16"):
            out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=n, max_new_tokens=m, min_new_tokens=m,
                                 pad_token_id=tok.eos_token_id)
        seconds = time.perf_counter() - start
        new = out.shape[1] - inputs["input_ids"].shape[1]
        assert new == m, f"{new} new tokens, expected {m}"
        return seconds

    once(0)
    times = [once(seed) for seed in range(1, args.runs + 1)]
    seconds = statistics.median(times)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                    for f in line.split()[2:] if f.startswith(("avx2", "avx512", "amx"))})
    print(json.dumps({"side": "transformers", "dtype": args.dtype, "sequences": n,
                      "new_tokens": n * m, "prompt_tokens": inputs["input_ids"].shape[1],
                      "seconds": round(seconds, 3), "tokens_per_s": round(n * m / seconds, 1),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu_flags": flags}))


if __name__ == "__main__":
    main()
