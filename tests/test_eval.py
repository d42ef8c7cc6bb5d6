"""Evaluation: scoring functions, question files, before/after on a tiny model, `lorastudio eval`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio.cli import main  # noqa: E402
from lorastudio.evaluate import (  # noqa: E402
    EvalFileError,
    EvalQuestion,
    evaluate,
    load_questions,
    rouge_l,
    score,
    tokens,
)

# --- pure scoring --------------------------------------------------------------------------


def test_tokens_split_cjk_per_character_and_keep_words():
    assert tokens("工单超过48小时, upgrade YZ-LD2406！") == [
        "工", "单", "超", "过", "48", "小", "时", "upgrade", "yz", "ld2406"]


def test_rouge_l_values():
    assert rouge_l("工单超过48小时升级", "工单超过48小时升级") == 1.0
    assert rouge_l("完全无关", "工单升级") == 0.0
    # LCS 工单升级 (4 tokens) of 6 and 4 tokens: P=4/6, R=1 → F1=0.8
    assert rouge_l("工单会被升级", "工单升级") == pytest.approx(0.8)
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
    # order matters (unlike a bag of characters)
    assert rouge_l("级升单工", "工单升级") < 0.5


def test_score_normalises_width_case_and_spaces():
    q = EvalQuestion("q", expected="工单超过48小时自动升级", must_contain=["48小时", "护航组", "yz-ld2406"])
    s = score("工单超过４８ 小时，转二线护航组 (YZ-LD2406)", q)
    assert s.must_contain_pass is True and s.keys_found == ["48小时", "护航组", "yz-ld2406"]
    assert s.exact_match is False and 0 < s.similarity < 1
    s2 = score("只提到护航组", q)
    assert s2.must_contain_pass is False and s2.keys_found == ["护航组"]
    assert score("工单超过48小时 自动升级", q).exact_match is True
    bare = score("anything", EvalQuestion("q"))
    assert bare.must_contain_pass is None and bare.exact_match is None and bare.similarity is None


# --- question files ------------------------------------------------------------------------


def test_load_questions_jsonl_csv_and_aliases(tmp_path):
    j = tmp_path / "q.jsonl"
    j.write_text(
        json.dumps({"question": "A?", "expected": "a", "must_contain": ["x", "y"]}) + "\n\n"
        + json.dumps({"问题": "B？", "必须包含": "甲|乙 | 丙"}, ensure_ascii=False) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "C?"}]}) + "\n",
        encoding="utf-8")
    qs = load_questions(j)
    assert [(q.question, q.expected, q.must_contain, q.row) for q in qs] == [
        ("A?", "a", ["x", "y"], 1), ("B？", None, ["甲", "乙", "丙"], 3), ("C?", None, [], 4)]
    c = tmp_path / "q.csv"
    c.write_bytes("question,expected,must_contain\n问一,答一,关键|词\n问二,,\n".encode("gb18030"))
    qs = load_questions(c)
    assert [(q.question, q.expected, q.must_contain, q.row) for q in qs] == [
        ("问一", "答一", ["关键", "词"], 1), ("问二", None, [], 2)]
    t = tmp_path / "q.txt"
    t.write_text("one\n\ntwo\n")
    assert [q.question for q in load_questions(t)] == ["one", "two"]


def test_load_questions_reports_file_row_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "ok"}\n{"answer": "no question"}\n{"question": " "}\n'
                 '{"question": "q", "must_contain": {"a": 1}}\n')
    with pytest.raises(EvalFileError) as info:
        load_questions(f)
    msg = str(info.value)
    assert "bad.jsonl, row 2: no question field" in msg
    assert "row 3, field 'question': the question is empty" in msg
    assert "row 4, field 'must_contain'" in msg
    with pytest.raises(EvalFileError, match="line 2: not valid JSON"):
        (tmp_path / "b2.jsonl").write_text('{"question": "a"}\n{oops\n')
        load_questions(tmp_path / "b2.jsonl")
    with pytest.raises(EvalFileError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


# --- before/after on a tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyeval")
    base = build_tiny_model(root / "base")
    return {"base": base, "adapter": build_adapter(base, root / "adapter", seed=1)}


def test_evaluate_before_after_on_tiny_model(tiny):
    from lorastudio.inference import ChatEngine

    engine = ChatEngine(str(tiny["base"]))
    qs = ["工单超过多久会升级？", "What is YZ-LD2406?", "满意度低于3分怎么办？"]
    tuned = [engine.generate(q, adapter=tiny["adapter"], max_new_tokens=12) for q in qs]
    base = [engine.generate(q, max_new_tokens=12) for q in qs]
    # Key strings taken from the tuned answers, so "after" must pass and be counted exactly.
    questions = [
        EvalQuestion(qs[0], expected=tuned[0], must_contain=[tuned[0][:3]], row=1),
        EvalQuestion(qs[1], expected=base[1], must_contain=["never-said-zz"], row=2),
        EvalQuestion(qs[2], row=3),
    ]
    report = evaluate(engine, tiny["adapter"], questions, max_new_tokens=12, batch_size=2)
    assert [r.before.answer for r in report.results] == base
    assert [r.after.answer for r in report.results] == tuned
    after, before = report.summary("after"), report.summary("before")
    assert after["must_contain_total"] == 2 and after["must_contain_pass"] == 1
    assert after["exact_match"] == 0.5  # q1 tuned == expected, q2 tuned != base answer
    assert before["exact_match"] == 0.5  # q2 base == expected
    assert report.results[0].after.similarity == 1.0
    table = report.table()
    assert "before" in table and "after" in table and "1/2 (50%)" in table and "3 questions" in table
    d = report.to_dict()
    assert d["after"]["must_contain_pass"] == 1 and len(d["questions"]) == 3
    json.dumps(d)  # serialisable
    assert "微调后" in report.table("zh")


def test_eval_cli_json_and_output(tiny, tmp_path, capsys):
    qf = tmp_path / "q.jsonl"
    qf.write_text('{"question": "工单？", "must_contain": "48小时"}\n{"question": "hi", "expected": "hello"}\n',
                  encoding="utf-8")
    out = tmp_path / "r" / "report.json"
    code = main(["eval", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]), "--questions", str(qf),
                 "--json", "--output", str(out), "--max-new-tokens", "6"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["before"]["questions"] == 2 and printed["after"]["must_contain_total"] == 1
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    code = main(["eval", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]), "--questions", str(qf),
                 "--max-new-tokens", "4", "--details"])
    text = capsys.readouterr().out
    assert code == 0 and "key fact recall" in text and "工单？" in text


def test_eval_cli_errors_exit_2(tiny, tmp_path, capsys):
    qf = tmp_path / "q.jsonl"
    qf.write_text('{"answer": "x"}\n')
    assert main(["eval", "--base", str(tiny["base"]), "--questions", str(qf), "--json"]) == 2
    captured = capsys.readouterr()
    assert "row 1: no question field" in json.loads(captured.out)["error"]
    qf.write_text('{"question": "x"}\n')
    assert main(["eval", "--base", str(tiny["base"]), "--adapter", str(tmp_path / "gone"),
                 "--questions", str(qf)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_questions_xlsx(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["问题", "必须包含", "参考答案"])
    ws.append(["工单多久升级？", "48小时|护航组", "48小时后升级到护航组"])
    ws.append(["价格？", None, None])
    wb.save(tmp_path / "q.xlsx")
    qs = load_questions(tmp_path / "q.xlsx")
    assert [(q.question, q.must_contain, q.expected, q.row) for q in qs] == [
        ("工单多久升级？", ["48小时", "护航组"], "48小时后升级到护航组", 1), ("价格？", [], None, 2)]
