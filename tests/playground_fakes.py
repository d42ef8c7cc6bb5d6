"""A scripted chat engine for the playground's tests (API and browser): FakeEngine plus generate_batch,
answering the built-in general questions with their key facts (the tuned model forgets two)."""

from __future__ import annotations

import time
from pathlib import Path

from lorastudio import playground
from tests.serve_fakes import FakeEngine

GENERAL = playground.general_questions()
FORGOTTEN = {GENERAL[0].question, GENERAL[3].question}  # the tuned model answers these wrongly


class ScriptedEngine(FakeEngine):
    """FakeEngine plus generate_batch; general questions are answered with their first key string
    (the base and the tuned model), except FORGOTTEN ones by the tuned model ("I do not know")."""

    def _answer(self, messages, adapter) -> str:
        from lorastudio.inference import normalize_messages

        msgs = normalize_messages(messages)
        question = msgs[-1]["content"]
        for q in GENERAL:
            if q.question == question:
                if adapter and question in FORGOTTEN:
                    return "I do not know."
                key = q.keys[0]
                return f"It is {key[0] if isinstance(key, list) else key}."
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else "-"
        turns = len(msgs)
        return f"{self.base}|{Path(adapter).name if adapter else 'base'}|{system}|{turns}: {question}"

    def generate_batch(self, questions, adapter=None, max_new_tokens=256, batch_size=8, **kw):
        return [self._answer(q, adapter) for q in questions]


class SlowEngine(ScriptedEngine):
    """Pieces arrive `delay` seconds apart, so a browser can see an answer grow."""

    delay = 0.12

    def stream(self, messages, adapter=None, max_new_tokens=256, temperature=0.0, top_p=1.0, seed=None, *,
               stats=None):
        for piece in super().stream(messages, adapter, max_new_tokens, temperature, top_p, seed, stats=stats):
            time.sleep(self.delay)
            yield piece
