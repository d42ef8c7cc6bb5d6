"""A handful of company Q&A rows for the trainer tests (one process and torchrun), a writer, and a fake step clock."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [
    ("工单超过多久没处理会自动升级？", "工单超过48小时未处理，会自动升级到二线护航组。"),
    ("满意度评分多少才能关单？", "满意度评分≥3分才能关单，低于3分自动重开。"),
    ("观星3.2的型号和售价？", "型号YZ-LD2406，售价299元。"),
    ("客服电话分机是多少？", "分机6021，工作日9点到18点。"),
    ("What is the price of YZ-LD2406?", "It costs 299 yuan."),
    ("栈台当前版本是什么？", "栈台当前版本为V5.3，代号青鸾。"),
]


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("\n".join(json.dumps({"instruction": q, "response": a}, ensure_ascii=False) for q, a in rows)
                    + "\n", encoding="utf-8")
    return path


def fake_step_clock(monkeypatch, first_s: float, later_s: float) -> dict:
    """The trainer's clock (`trainer.time`) made to move only in the loss: `first_s` seconds for the first call (a
    step's one-off costs), `later_s` for each later one. Returns the clock's state (`now`, `calls`) to read or reset."""
    from lorastudio.train import device, trainer

    clock = {"now": 1_000.0, "calls": 0}

    class FakeTime:
        @staticmethod
        def time() -> float:
            return clock["now"]

    real_loss = device.causal_lm_loss

    def timed_loss(model, batch):
        clock["calls"] += 1
        clock["now"] += first_s if clock["calls"] == 1 else later_s
        return real_loss(model, batch)

    monkeypatch.setattr(trainer, "time", FakeTime)
    monkeypatch.setattr(device, "causal_lm_loss", timed_loss)
    return clock
