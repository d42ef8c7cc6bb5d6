"""The training rows beside each question (lorastudio/knowledge.py): retrieval, grounding, the adapter's
knowledge file, and the engine that puts them in the prompt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402
from train_fixtures import ROWS  # noqa: E402

from lorastudio.data.types import Conversation, Message  # noqa: E402
from lorastudio.inference import AdapterError, ChatEngine  # noqa: E402
from lorastudio.knowledge import (  # noqa: E402
    HEADER,
    MAX_CHARS,
    Knowledge,
    KnowledgeError,
    Retriever,
    load_knowledge,
    rows_of,
    write_knowledge,
)

DEMO = Path(__file__).resolve().parents[1] / "lorastudio/assets/demo/yunzhan_train.jsonl"


def test_retriever_finds_the_row_of_a_reworded_question_and_nothing_for_an_unrelated_one():
    rows = [tuple(r) for r in ROWS]
    r = Retriever(rows)
    assert r.top("工单一直没人处理，多久会升级？", 2)[0] == 0
    assert r.top("关单要满意度几分？", 1) == [1]
    assert r.top("how much is YZ-LD2406", 1) == [4]
    assert r.top("ξψω", 6) == []  # no bigram in common: no row is sent at all


def test_retriever_on_the_demo_file_puts_each_paraphrase_questions_fact_in_the_top_six():
    rows = [(r["instruction"], r["response"]) for r in map(json.loads, DEMO.read_text(encoding="utf-8").splitlines())]
    items = [json.loads(line) for line in (DEMO.parents[3] / "evalsets/yunzhan_paraphrase.jsonl").read_text(
        encoding="utf-8").splitlines()]
    r = Retriever(rows)
    found = 0
    for item in items:
        keys = [k if isinstance(k, list) else [k] for k in item["must_contain"]]
        text = "".join(rows[i][1] for i in r.top(item["question"], 6))
        found += all(any(alt in text for alt in alts) for alts in keys)
    # every key of the question's answer in the six rows retrieved (measured: 79 of 80; the closest row alone 76)
    assert found >= 76, found


def test_ground_appends_to_the_system_message_and_asks_with_the_previous_question():
    k = Knowledge([tuple(r) for r in ROWS], 2)
    plain = k.ground([{"role": "user", "content": "观星3.2卖多少钱？"}])
    assert plain[0]["role"] == "system" and plain[0]["content"].startswith(HEADER["zh"])
    assert "售价299元" in plain[0]["content"] and plain[1] == {"role": "user", "content": "观星3.2卖多少钱？"}
    own = k.ground([{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "观星3.2卖多少钱？"}])
    assert own[0]["content"].startswith("你是客服。\n\n" + HEADER["zh"]) and len(own) == 2
    trained = k.ground([{"role": "user", "content": "观星3.2卖多少钱？"}], system_prompt="你是云栈的客服。")
    assert trained[0]["content"].startswith("你是云栈的客服。\n\n")
    # a follow-up without the product's name still finds its row through the question before it
    follow = k.ground([{"role": "user", "content": "观星3.2的型号是什么？"}, {"role": "assistant", "content": "YZ-LD2406"},
                       {"role": "user", "content": "那售价呢？"}])
    assert "售价299元" in follow[0]["content"]
    assert k.ground([{"role": "user", "content": "ξψω"}]) == [{"role": "user", "content": "ξψω"}]
    assert Knowledge([tuple(r) for r in ROWS], 0).block("观星3.2卖多少钱？") is None


def test_block_keeps_the_closest_row_and_stops_at_the_text_budget():
    long = "长" * (MAX_CHARS - 100)
    k = Knowledge([("观星的售价？", "售价299元。" + long), ("观星的型号？", "型号YZ-LD2406。" + long)], 6)
    block = k.block("观星的售价和型号？")
    assert block is not None and block.count("问：") == 1  # the second row would pass the budget


def test_rows_of_reads_every_turn_once_and_write_knowledge_round_trips(tmp_path):
    convs = [Conversation([Message("system", "s"), Message("user", "问一"), Message("assistant", "答一"),
                           Message("user", "问二"), Message("assistant", "答二")]),
             Conversation([Message("user", "问一"), Message("assistant", "答一")]),  # the same row again
             [{"role": "user", "content": " "}, {"role": "assistant", "content": "无问"}]]
    assert rows_of(convs) == [("问一", "答一"), ("问一\n问二", "答二")]  # a follow-up carries the question before it
    (tmp_path / "train_config.yaml").write_text("knowledge_rows: 3\n", encoding="utf-8")
    assert write_knowledge(tmp_path, convs) == 2
    k = load_knowledge(tmp_path)
    assert k is not None and k.k == 3 and k.rows == [("问一", "答一"), ("问一\n问二", "答二")] and k.lang == "zh"
    (tmp_path / "train_config.yaml").write_text("knowledge_rows: 0\n", encoding="utf-8")
    write_knowledge(tmp_path, convs[:1])  # a new file version: the cache does not answer with the old one
    assert load_knowledge(tmp_path) is None
    assert load_knowledge(tmp_path / "nowhere") is None


def test_a_broken_knowledge_file_names_its_line_and_the_fix(tmp_path):
    (tmp_path / "knowledge.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": 1}\n', encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"knowledge.jsonl, line 2: needs a \"question\" and an \"answer\""):
        load_knowledge(tmp_path)
    (tmp_path / "knowledge.jsonl").write_text('{"question": "q", "answer": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(AdapterError, match="line 2: not valid JSON.*delete"):
        load_knowledge(tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("know")
    base = build_tiny_model(root / "base")
    adapter = build_adapter(base, root / "adapter", seed=1)
    write_knowledge(adapter, [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in ROWS])
    return base, adapter


def test_the_engine_puts_the_adapters_rows_in_the_prompt_only_for_that_adapter(tiny):
    base, adapter = tiny
    question = "观星3.2卖多少钱？"
    eng = ChatEngine(str(base))
    decode = eng.tokenizer.decode
    with_rows = decode(eng._encode([{"role": "user", "content": question}], adapter))
    assert "售价299元" in with_rows and HEADER["zh"].strip() in with_rows
    assert "售价299元" not in decode(eng._encode([{"role": "user", "content": question}]))  # the base model
    off = ChatEngine(str(base), knowledge=False)
    assert "售价299元" not in decode(off._encode([{"role": "user", "content": question}], adapter))
    # a request's own choice wins over the engine's, both ways (the HTTP API's `knowledge` field)
    assert decode(eng._encode([{"role": "user", "content": question}], adapter, False)) == \
        decode(off._encode([{"role": "user", "content": question}], adapter))
    assert off.complete(question, adapter, max_new_tokens=2, knowledge=True).prompt_tokens == \
        eng.complete(question, adapter, max_new_tokens=2).prompt_tokens > \
        eng.complete(question, adapter, max_new_tokens=2, knowledge=False).prompt_tokens
    # and the answers go through it: rows in the prompt change what the adapter says
    assert eng.generate(question, adapter=adapter, max_new_tokens=8) != off.generate(question, adapter=adapter,
                                                                                      max_new_tokens=8)


def test_the_engine_asks_at_the_adapters_reading_strength_only_while_it_reads(tiny, tmp_path, monkeypatch):
    import shutil

    base, adapter = tiny
    half = tmp_path / "half"
    shutil.copytree(adapter, half)
    (half / "train_config.yaml").write_text("knowledge_rows: 6\nknowledge_strength: 0.5\n", encoding="utf-8")
    assert load_knowledge(half).strength == 0.5 and load_knowledge(adapter).strength == 1.0
    eng = ChatEngine(str(base))
    seen = []
    ids, many = eng.backend.generate_ids, eng.backend.generate_many
    monkeypatch.setattr(eng.backend, "generate_ids", lambda *a, **kw: seen.append(kw["strength"]) or ids(*a, **kw))
    monkeypatch.setattr(eng.backend, "generate_many", lambda *a, **kw: seen.append(kw["strength"]) or many(*a, **kw))
    question = "观星3.2卖多少钱？"
    eng.generate(question, adapter=half, max_new_tokens=2)
    eng.complete(question, half, max_new_tokens=2, knowledge=False)  # the weights alone: the full adapter
    eng.generate(question, adapter=adapter, max_new_tokens=2)  # no strength saved: as trained
    eng.generate_batch([question], adapter=half, max_new_tokens=2)
    ChatEngine.generate_batch(eng, [question], adapter=None, max_new_tokens=2)
    assert seen == [0.5, 1.0, 1.0, 0.5, 1.0]
    # an edited train_config.yaml is read again (the cache follows both files)
    (half / "train_config.yaml").write_text("knowledge_rows: 6\nknowledge_strength: 2\n", encoding="utf-8")
    assert load_knowledge(half).strength == 1.0  # out of range: ignored, as trained


def test_a_weaker_adapter_is_its_lora_update_scaled_and_restored_after_the_call(tiny, tmp_path):
    import threading

    from inference_fixtures import build_adapter as build

    base, _ = tiny
    full = build(base, tmp_path / "full", seed=5, scale=2.0)
    halved = build(base, tmp_path / "halved", seed=5, scale=1.0)  # the same A, B at half
    eng = ChatEngine(str(base), dtype="fp32", engine="transformers")
    prompt = eng._encode([{"role": "user", "content": "观星3.2卖多少钱？"}])

    def answer(adapter, strength=1.0):
        return eng.backend.generate_ids(prompt, adapter.resolve(), 12, 0.0, 1.0, None, lambda _: None,
                                        threading.Event(), strength=strength)

    first = answer(full)
    assert answer(full, 0.5) == answer(halved) != first
    assert answer(full) == first  # the scaling is back
    assert eng.backend.generate_many([prompt], full.resolve(), lambda n: 12, 0.0, 1.0, None, 1, strength=0.5) == \
        [answer(halved)]
