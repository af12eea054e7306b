"""Hugging Face `datasets` doing kiln-data's streaming path, for a side-by-side comparison.

    pip install -r tools/fixtures/requirements-data.txt
    cargo run --release -p kiln-data --example pipeline_throughput -- /tmp/kiln-bench/100k.jsonl 100000
    /usr/bin/time -v python3 tools/bench_datasets.py /tmp/kiln-bench/100k.jsonl

Same input file (written by the Rust example / bench with seed 0), same tokenizer
(fixtures/chat_templates/tokenizer.json), same work: load JSON Lines, render the ChatML
template, tokenize with the fast tokenizer in batches, completion-only labels
(transformers' `return_assistant_tokens_mask`, the way TRL's `assistant_only_loss` gets them),
truncate to 2,048 tokens and pack greedily into 2,048-token rows; `num_proc` = cores (2).
The datasets cache goes to a fresh temporary directory so nothing is reused between runs.
"""

import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "chat_templates"
SEQ_LEN = 2048
NUM_PROC = os.cpu_count() or 2

CHATML_GENERATION = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def main():
    path = sys.argv[1]
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="kiln-bench-hf-")
    import datasets
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(FIX / "tokenizer.json"), bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=path, split="train",
                               cache_dir=os.environ["HF_DATASETS_CACHE"])

    def encode(batch):
        out = tok.apply_chat_template(
            batch["messages"], chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, labels = [], []
        for i, m in zip(out["input_ids"], out["assistant_masks"]):
            i, m = i[:SEQ_LEN], m[:SEQ_LEN]
            ids.append(i)
            labels.append([t if k else -100 for t, k in zip(i, m)])
        return {"input_ids": ids, "labels": labels}

    ds = ds.map(encode, batched=True, num_proc=NUM_PROC, remove_columns=ds.column_names)

    def pack(batch):
        rows = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
        cur = {k: [] for k in rows}
        seg = 0

        def flush():
            n = SEQ_LEN - len(cur["input_ids"])
            rows["input_ids"].append(cur["input_ids"] + [tok.pad_token_id] * n)
            rows["labels"].append(cur["labels"] + [-100] * n)
            rows["position_ids"].append(cur["position_ids"] + [0] * n)
            rows["segment_ids"].append(cur["segment_ids"] + [0] * n)

        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > SEQ_LEN:
                flush()
                cur = {k: [] for k in rows}
                seg = 0
            seg += 1
            cur["input_ids"] += ids
            cur["labels"] += labels
            cur["position_ids"] += list(range(len(ids)))
            cur["segment_ids"] += [seg] * len(ids)
        if cur["input_ids"]:
            flush()
        return rows

    packed = ds.map(pack, batched=True, batch_size=4096, num_proc=NUM_PROC,
                    remove_columns=ds.column_names)
    secs = time.perf_counter() - start
    tokens = sum(len(x) for x in ds["input_ids"])
    print(f"records {len(ds)} rows {len(packed)} tokens {tokens} secs {secs:.2f} "
          f"records/s {len(ds) / secs:.0f}")


if __name__ == "__main__":
    main()
