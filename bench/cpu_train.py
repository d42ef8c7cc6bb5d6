"""CPU LoRA training throughput on the default model, bf16 autocast vs fp32 (docs/ENGINE.md).

    python bench/cpu_train.py bf16 4 512     # dtype, optimizer steps, tokens per packed step [, data file]
    python bench/cpu_train.py fp32 4 512
    LORASTUDIO_CPU_FAST=0 python bench/cpu_train.py bf16 4 512   # without the CPU fast path (train/cpu.py)

Prints wall tokens/s and tokens per CPU-second (process time over all threads), both over the steps
after the first (the first includes one-off kernel setup). On a shared machine compare the CPU-second
figure: the wall figure mostly measures the neighbours.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from lorastudio.train import TrainConfig, read_events, train


def main() -> None:
    dtype, steps, batch_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = sys.argv[4] if len(sys.argv) > 4 else str(Path(__file__).resolve().parents[1] / "shared/data/yunzhan_train.jsonl")
    marks: list[tuple[float, float]] = []  # (wall, cpu) at the start of training and after each step

    def on_event(event: dict) -> None:
        if event["type"] == "metrics" or (event["type"] == "stage" and event["stage"] == "train"):
            marks.append((time.time(), time.process_time()))

    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(data=data, base="default", output_dir=out, max_steps=steps, batch_tokens=batch_tokens,
                          max_length=batch_tokens, dtype=dtype, val_fraction=0.0, save_every=10**6),
              on_event=on_event)
        metrics = [e for e in read_events(Path(out) / "events.jsonl") if e["type"] == "metrics"]
    # tokens_per_s × elapsed_s = tokens so far in this session
    seen = [m["tokens_per_s"] * m["elapsed_s"] for m in metrics]
    tokens = seen[-1] - seen[0]
    wall, cpu = marks[-1][0] - marks[1][0], marks[-1][1] - marks[1][1]
    print(json.dumps({"dtype": dtype, "steps": steps, "batch_tokens": batch_tokens, "tokens_after_first": round(tokens),
                      "wall_tok_s": round(tokens / wall, 1), "tok_per_cpu_s": round(tokens / cpu, 1),
                      "first_step_wall_s": round(marks[1][0] - marks[0][0], 1),
                      "losses": [m["loss"] for m in metrics]}))


if __name__ == "__main__":
    main()
