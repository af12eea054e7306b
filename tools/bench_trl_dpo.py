#!/usr/bin/env python3
"""The TRL side of the DPO speed comparison: TRL's DPOTrainer with a PEFT LoRA adapter.

Also writes the preference pairs both sides train on (`--write-data`), so kiln's `dpo` example
reads the same records. `tools/bench_dpo_side_by_side.sh` runs this and kiln back to back.

    python3 tools/bench_trl_dpo.py --model DIR --write-data /tmp/dpo_pairs.jsonl
    python3 tools/bench_trl_dpo.py --model DIR --data /tmp/dpo_pairs.jsonl --precision f32 \
        --steps 8 --warmup 2

DIR is a Hugging Face model directory (config.json, model.safetensors, tokenizer files). From
kiln's default GGUF (transformers dequantizes it; both sides then read the same f32 weights):

    python3 tools/bench_trl_dpo.py --hf-from-gguf ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model /tmp/smollm2-hf

Setting: batch 2 pairs, `max_length` 256 (prompt + completion), LoRA r 16, alpha 32, dropout 0 on
q_proj, k_proj, v_proj, o_proj (kiln's `dpo` defaults), sigmoid loss, beta 0.1, AdamW lr 1e-6,
no gradient checkpointing; the reference is the policy with its adapter disabled (PEFT), as in
kiln. Prints one JSON line: median step time after the warmup steps, tokens per step (the
non-padding tokens of the chosen and rejected sequences the step trains on), tokens/s, peak RSS,
and the CPU's flags. Versions: tools/fixtures/requirements-trl.txt (trl 1.16.0, peft 0.21.2,
transformers 5.23.0, torch 2.15.0).
"""
import argparse
import json
import resource
import statistics
import time

SUBJECTS = ["the sea", "a compiler", "the census", "a violin", "bread", "a glacier", "the moon",
            "a library", "rain", "a bicycle", "tea", "a bridge"]


def pairs(n, words):
    """n preference pairs whose prompt and completions are each about `words` words long."""
    out = []
    for i in range(n):
        s = SUBJECTS[i % len(SUBJECTS)]
        filler = " ".join(f"{s} detail {j}" for j in range(words // 3))
        out.append({
            "prompt": f"Question {i}: describe {s} carefully. Context: {filler}",
            "chosen": f" A careful description of {s}: " + " ".join(
                f"point {j} about {s} is clear" for j in range(words // 6)),
            "rejected": f" I do not know much about {s}. " + " ".join(
                f"maybe {j} things" for j in range(words // 3)),
        })
    return out


def hf_from_gguf(gguf, out):
    """The GGUF's weights dequantized by transformers, saved as safetensors with its config
    (`architectures` set, the GGUF `quantization_config` dropped, so trainers and
    `transformers serve` accept it) and tokenizer."""
    import os
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    os.makedirs(out, exist_ok=True)
    tied = model.config.tie_word_embeddings
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                keep = ("avx2", "avx512", "amx", "fma")
                return sorted(f for f in line.split(":")[1].split() if f.startswith(keep))
    except OSError:
        pass
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data")
    ap.add_argument("--write-data")
    ap.add_argument("--hf-from-gguf", help="write --model as an HF directory from this GGUF")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--words", type=int, default=72)
    ap.add_argument("--precision", choices=["f32", "autocast-bf16"], default="f32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precompute-ref-log-probs", action="store_true",
                    help="the reference log-probs in one pass before training, not one forward per step")
    args = ap.parse_args()
    if args.hf_from_gguf:
        hf_from_gguf(args.hf_from_gguf, args.model)
        return
    if args.write_data:
        with open(args.write_data, "w") as f:
            for r in pairs(args.pairs, args.words):
                f.write(json.dumps(r) + "\n")
        return

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in open(args.data)]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lora)

    times, tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    class Counting(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The non-padding tokens of the chosen and rejected sequences of this micro-batch.
            n = 0
            for key in ("chosen_attention_mask", "rejected_attention_mask",
                        "prompt_attention_mask", "completion_attention_mask", "attention_mask"):
                if key in inputs:
                    n += int(inputs[key].sum())
            tokens.append(n)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    config = DPOConfig(
        output_dir="/tmp/bench_trl_dpo", per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=1e-6,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.1, loss_type=["sigmoid"], max_length=256, truncation_mode="keep_start",
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        bf16=args.precision == "autocast-bf16", fp16=False, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False,
        precompute_ref_log_probs=args.precompute_ref_log_probs,
    )
    trainer = Counting(model=model, args=config, train_dataset=Dataset.from_list(rows),
                       processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    steady = times[args.warmup:]
    step = statistics.median(steady)
    tok = statistics.mean(tokens[args.warmup:]) if len(tokens) > args.warmup else float("nan")
    print(json.dumps({
        "side": "trl", "precision": args.precision, "steps": len(steady),
        "precompute_ref_log_probs": args.precompute_ref_log_probs,
        "step_s_median": round(step, 3), "tokens_per_step": tok,
        "tokens_per_s": round(tok / step, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_flags": cpu_flags(),
    }))


if __name__ == "__main__":
    main()
