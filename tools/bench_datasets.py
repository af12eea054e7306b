"""Hugging Face `datasets` doing kiln-data's streaming path, for a side-by-side comparison.

    pip install -r tools/fixtures/requirements-data.txt   # datasets 5.2.0, transformers 5.23.0
    python3 tools/bench_datasets.py FILE.jsonl [--tokenizer tokenizer.json]

`tools/bench_data_side_by_side.py` runs it against kiln's `pipeline_throughput` example on the
same input file (written by the Rust example / bench with seed 0) and the same tokenizer
(default fixtures/chat_templates/tokenizer.json; the side-by-side uses SmolLM2's), same work: load JSON Lines, render the ChatML
template, tokenize with the fast tokenizer in batches, completion-only labels
(transformers' `return_assistant_tokens_mask`, the way TRL's `assistant_only_loss` gets them),
truncate to 2,048 tokens and pack greedily into 2,048-token rows; `num_proc` = cores (2).
The datasets cache goes to a fresh temporary directory so nothing is reused between runs (and is
removed at the end); columns are stored as int32, which halves what is written (about 9 GB of
Arrow files for 1,000,000 records instead of 18 GB).
"""

import argparse
import os
import pathlib
import shutil
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
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--tokenizer", default=str(FIX / "tokenizer.json"))
    args = ap.parse_args()
    path = args.file
    cache = tempfile.mkdtemp(prefix="kiln-bench-hf-")
    os.environ["HF_DATASETS_CACHE"] = cache
    import datasets
    import pyarrow.compute as pc
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=args.tokenizer, bos_token="<|im_start|>",
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
        ids, labels, trained = [], [], []
        for i, m in zip(out["input_ids"], out["assistant_masks"]):
            i, m = i[:SEQ_LEN], m[:SEQ_LEN]
            ids.append(i)
            labels.append([t if k else -100 for t, k in zip(i, m)])
            trained.append(sum(m))
        return {"input_ids": ids, "labels": labels, "trained": trained}

    def int32(*names):
        return datasets.Features({n: datasets.List(datasets.Value("int32")) for n in names})

    ds = ds.map(encode, batched=True, num_proc=NUM_PROC, remove_columns=ds.column_names,
                features=datasets.Features({**int32("input_ids", "labels"),
                                            "trained": datasets.Value("int32")}))

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
                    remove_columns=ds.column_names,
                    features=int32("input_ids", "labels", "position_ids", "segment_ids"))
    secs = time.perf_counter() - start
    # Counted from per-record numbers: reading the token columns back would map gigabytes.
    tokens = pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py()
    trained = pc.sum(ds.data.column("trained")).as_py()
    shutil.rmtree(cache, ignore_errors=True)
    print(f"records {len(ds)} rows {len(packed)} tokens {tokens} trained {trained} secs {secs:.2f} "
          f"records/s {len(ds) / secs:.0f}")


if __name__ == "__main__":
    main()
