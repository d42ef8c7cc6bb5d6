"""Fakes for the service tests: a trainer command that speaks the events.jsonl contract, and a chat
engine with ChatEngine's interface. Real-model tests live in test_serve_e2e.py."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

FAKE_TRAINER = r'''
import argparse, json, os, signal, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("data"); p.add_argument("--base"); p.add_argument("--output"); p.add_argument("--config")
p.add_argument("--resume", action="store_true")
a = p.parse_args()
out = Path(a.output)
steps = int(os.environ.get("FAKE_STEPS", "6"))
step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
mode = os.environ.get("FAKE_MODE", "ok")
(out / "argv.log").open("a").write(json.dumps(sys.argv[1:]) + "\n")
(out / "device.log").open("a").write(os.environ.get("CUDA_VISIBLE_DEVICES", "-") + "\n")
events = (out / "events.jsonl").open("a")
def emit(**kw):
    kw["time"] = time.time()
    events.write(json.dumps(kw) + "\n"); events.flush()
def save(step):
    ck = out / "checkpoints" / f"step-{step:08d}"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "adapter_config.json").write_text("{}")
    (ck / "trainer_state.pt").write_bytes(b"fake")  # written last, as the real trainer does: "usable"
    emit(type="checkpoint", step=step, path=str(ck), train_loss=1.0 / step, valid_loss=None)
start = 0
if a.resume:
    cks = sorted((out / "checkpoints").glob("step-*"))
    start = int(cks[-1].name.split("-")[1])
    emit(type="resumed", step=start, path=str(cks[-1]))
current = [start]
def on_term(signum, frame):
    if os.environ.get("FAKE_IGNORE_TERM"):
        return
    save(max(current[0], 1)); sys.exit(130)
signal.signal(signal.SIGTERM, on_term)
if mode == "unusable":
    print("no usable rows in data", file=sys.stderr); sys.exit(2)
emit(type="stage", stage="train", message="Training")
for step in range(start + 1, steps + 1):
    time.sleep(step_s)
    current[0] = step
    emit(type="metrics", step=step, total_steps=steps, epoch=step / steps, percent=100.0 * step / steps,
         eta_s=(steps - step) * step_s, tokens_per_s=1000.0, loss=2.0 / step, lr=1e-4, elapsed_s=step * step_s,
         cost=0.0)
    if step % 2 == 0:
        save(step)
if mode == "crash":
    emit(type="error", message="CUDA out of memory (fake)"); sys.exit(1)
(out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": a.base}))
(out / "adapter_model.safetensors").write_bytes(b"fake")
emit(type="done", adapter_dir=str(out), metrics={"trained_tokens": 1234})
'''


def fake_trainer_command(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return [sys.executable, str(script)]


@dataclasses.dataclass
class FakeCompletion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class FakeEngine:
    """Answers `<base>|<adapter name or 'base'>: <question>` so tests can see which weights answered."""

    loads: list[str] = []

    def __init__(self, base: str) -> None:
        self.base = base
        FakeEngine.loads.append(base)

    def _answer(self, messages, adapter) -> str:
        from lorastudio.inference import normalize_messages

        question = normalize_messages(messages)[-1]["content"]
        return f"{self.base}|{Path(adapter).name if adapter else 'base'}: {question}"

    @staticmethod
    def _rows(knowledge) -> str:
        """A request's own choice of the adapter's rows, when it made one, at the end of the answer."""
        return "" if knowledge is None else f" [knowledge={knowledge}]"

    def complete(self, messages, adapter=None, max_new_tokens=256, temperature=0.0, top_p=1.0, seed=None,
                 knowledge=None):
        text = (self._answer(messages, adapter) + self._rows(knowledge))[:max_new_tokens]
        return FakeCompletion(text, 7, len(text.split()), "stop")

    def generate(self, messages, adapter=None, **kw) -> str:
        return self.complete(messages, adapter, **kw).text

    def stream(self, messages, adapter=None, max_new_tokens=256, temperature=0.0, top_p=1.0, seed=None, *,
               stats=None, knowledge=None):
        text = self._answer(messages, adapter) + self._rows(knowledge)
        for word in text.split(" "):
            yield word + " "
        if stats is not None:
            stats.update(prompt_tokens=7, completion_tokens=len(text.split()), finish_reason="stop")
