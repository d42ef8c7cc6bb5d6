"""Greedy answers from the llama.cpp engine in a fresh process, for a process that already has
torch loaded (the trainer's replay answers and paraphrases, bench/quality/score.py's answers).

Why a child process: llama.cpp's threads wait with libgomp, which reads its spin setting once,
when first loaded. In the trainer torch loaded it first with the default (long) spin, and two
spinning threads on a loaded 2-core CPU are 10-20× slower (docs/ENGINE.md). The child loads
llama.cpp before torch, so it gets the short spin; it also frees the GGUF's memory when it ends.

```bash
python -m lorastudio.engines.batch request.json answers.json
# request: {"base": "default", "prompts": [[{"role": "user", "content": "..."}], ...],
#           "max_new_tokens": 192, "batch_size": 8, "adapter": null}
# max_new_tokens: one number, or one per prompt; adapter: a LoRA adapter directory (optional)
# stdout: "progress DONE TOTAL" lines; answers.json: a list of strings in prompt order
```
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class BatchError(RuntimeError):
    """The llama.cpp child failed; the message carries the end of its output."""


def run_llamacpp_batch(base: str, prompts: Sequence[Any], *, max_new_tokens: int | Sequence[int],
                       batch_size: int = 8, adapter: str | os.PathLike | None = None, knowledge: bool = True,
                       on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers (stripped, end-of-turn excluded) to `prompts` (messages lists) from the llama.cpp
    engine on `base` (with the LoRA `adapter` when given, and its knowledge rows unless `knowledge` is False),
    computed in a child process.
    `max_new_tokens`: one cap, or one per prompt. Raises `BatchError` if the child fails."""
    if not isinstance(max_new_tokens, int) and len(max_new_tokens) != len(prompts):
        raise ValueError(f"{len(max_new_tokens)} max_new_tokens for {len(prompts)} prompts")
    with tempfile.TemporaryDirectory(prefix="lorastudio-batch-") as tmp:
        request, answers = Path(tmp) / "request.json", Path(tmp) / "answers.json"
        budget = max_new_tokens if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
        request.write_text(json.dumps({"base": base, "prompts": list(prompts), "max_new_tokens": budget,
                                       "batch_size": batch_size, "adapter": None if adapter is None else str(adapter),
                                       "knowledge": knowledge},
                                      ensure_ascii=False), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "lorastudio.engines.batch", str(request), str(answers)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                errors="replace")
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "progress" and on_progress is not None:
                on_progress(int(parts[1]), int(parts[2]))
            else:
                tail = (tail + [line.rstrip()])[-20:]
        if proc.wait() != 0 or not answers.is_file():
            raise BatchError(f"the llama.cpp generation process exited with code {proc.returncode}: "
                             + " | ".join(t for t in tail if t.strip())[-1500:])
        out = json.loads(answers.read_text(encoding="utf-8"))
    if len(out) != len(prompts):
        raise BatchError(f"the llama.cpp generation process answered {len(out)} of {len(prompts)} prompts")
    return out


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    from lorastudio.inference import ChatEngine

    engine = ChatEngine(request["base"], engine="llama.cpp", knowledge=bool(request.get("knowledge", True)))
    prompts, batch = request["prompts"], max(1, int(request.get("batch_size", 8)))
    budget = request["max_new_tokens"]
    budgets = [int(x) for x in budget] if isinstance(budget, list) else [int(budget)] * len(prompts)
    adapter = request.get("adapter")
    answers: list[str] = []
    step = batch * 2
    start = 0
    while start < len(prompts):
        end = min(start + step, len(prompts))
        end = next((i for i in range(start + 1, end) if budgets[i] != budgets[start]), end)  # one cap per call
        answers += [a.strip() for a in engine.generate_batch(prompts[start:end], adapter=adapter, temperature=0.0,
                                                              max_new_tokens=budgets[start], batch_size=batch)]
        print(f"progress {len(answers)} {len(prompts)}", flush=True)
        start = end
    tmp = Path(argv[1]).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(answers, ensure_ascii=False), encoding="utf-8")
    tmp.replace(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
