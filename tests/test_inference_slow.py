"""The real default model (Qwen2.5-Coder-0.5B-Instruct): loads and answers. Minutes on a CPU."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_default_model_answers_a_question():
    from lorastudio.inference import ChatEngine

    engine = ChatEngine("default")
    answer = engine.generate("What is 12 + 30? Reply with the number only.", max_new_tokens=16)
    assert "42" in answer
    streamed = "".join(engine.stream("用一句话介绍一下你自己。", max_new_tokens=24))
    assert streamed == engine.generate("用一句话介绍一下你自己。", max_new_tokens=24)
    assert any("\u4e00" <= c <= "\u9fff" for c in streamed)  # answers Chinese in Chinese
