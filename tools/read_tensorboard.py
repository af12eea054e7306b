#!/usr/bin/env python3
"""Reads kiln's TensorBoard event files back with TensorBoard's own event reader.

Command (versions pinned in tools/requirements-tensorboard.txt):

    python3 -m pip install -r tools/requirements-tensorboard.txt
    python3 tools/read_tensorboard.py RUN_DIR_OR_EVENT_FILE [--expect-steps N]

Prints every scalar (tag, step, value) and exits non-zero if the file does not parse (TensorBoard's
loader checks the TFRecord CRCs), has no scalars, or, with --expect-steps, if `train/loss` does not
have exactly steps 1..N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util


def event_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.rglob("events.out.tfevents.*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--expect-steps", type=int)
    args = ap.parse_args()
    files = event_files(args.path)
    if not files:
        print(f"no event file under {args.path}", file=sys.stderr)
        return 1
    scalars: dict[str, list[tuple[int, float]]] = {}
    versions = []
    for f in files:
        # Data-compat conversion turns simple_value summaries into scalar tensors, as TensorBoard does.
        for event in EventFileLoader(str(f), detect_file_replacement=False).Load():
            if event.HasField("file_version"):
                versions.append(event.file_version)
            for value in event.summary.value:
                v = value.simple_value if value.HasField("simple_value") else float(tensor_util.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, v))
    print(f"{len(files)} file(s), file_version {versions}")
    for tag, points in sorted(scalars.items()):
        print(f"{tag}: " + ", ".join(f"{s}:{v:.6g}" for s, v in points))
    if not scalars:
        print("no scalars", file=sys.stderr)
        return 1
    if args.expect_steps is not None:
        steps = [s for s, _ in scalars.get("train/loss", [])]
        if steps != list(range(1, args.expect_steps + 1)):
            print(f"train/loss steps {steps}, expected 1..{args.expect_steps}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
