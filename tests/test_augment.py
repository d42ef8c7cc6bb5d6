"""Augmentation and replay: pure parts (filters, same-fact pairs, the prompt set, the cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastudio.data.types import Conversation
from lorastudio.train.augment import (
    augment_conversations,
    fact_groups,
    is_good_paraphrase,
    parse_paraphrases,
    same_fact_pairs,
    standalone_turns,
    strip_verdict,
)
from lorastudio.train.config import ConfigError, TrainConfig
from lorastudio.train.replay import general_prompts, general_replay, model_key

DEMO = Path(__file__).resolve().parents[1] / "lorastudio" / "assets" / "demo" / "yunzhan_train.jsonl"


def qa(q: str, a: str, row: int | None = None) -> Conversation:
    return Conversation.from_messages([{"role": "user", "content": q}, {"role": "assistant", "content": a}], row=row)


@pytest.mark.parametrize(("candidate", "ok"), [
    ("工单多长时间没人处理会被自动升级？", True),
    ("工单超过多久没处理会自动升级？", False),           # a copy
    ("工单超过48小时未处理会自动升级到护航组。", False),  # a statement, not a question
    ("升级？", False),                                   # too short
    ("How long before an unhandled ticket is escalated?", False),  # switched language
    ("", False),
])
def test_paraphrase_filter(candidate, ok):
    assert is_good_paraphrase(candidate, "工单超过多久没处理会自动升级？") is ok


def test_parse_paraphrases_strips_numbering_and_keeps_at_most_n():
    text = "1. 工单多长时间没人处理会被升级？\n2、没人跟进的工单多久后自动转二线？\n3) 工单闲置多久会升级给护航组？\n好的。"
    out = parse_paraphrases(text, "工单超过多久没处理会自动升级？", 2)
    assert out == ["工单多长时间没人处理会被升级？", "没人跟进的工单多久后自动转二线？"]


def test_english_paraphrases():
    out = parse_paraphrases("- How long until a ticket is escalated?\nSure!", "When is a ticket escalated?", 3)
    assert out == ["How long until a ticket is escalated?"]


def test_strip_verdict():
    assert strip_verdict("不能。单笔退款超过2000元需走双签。") == "单笔退款超过2000元需走双签。"
    assert strip_verdict("Yes. Orders ship within 24 hours.") == "Orders ship within 24 hours."
    kept = "栈台V5.3“青鸾”上线啦！新增智能补货。"
    assert strip_verdict(kept) == kept
    assert strip_verdict("会。") == "会。"  # nothing would be left


def test_fact_groups_group_same_fact_and_split_different_facts():
    convs = [
        qa("工单多久升级？", "工单超过48小时未处理，自动升级到二线护航组。"),
        qa("工单放两天会怎样？", "会。工单满48小时未处理就自动升级到二线护航组。"),
        qa("客服热线是多少？", "云栈客服热线是400-820-7788，服务时间9:00-22:00。"),
        qa("人工几点上班？", "人工客服服务时间为每天9:00-22:00，热线400-820-7788。"),
        qa("栖夏多少钱？", "栖夏亚麻连衣裙售价299元，SKU编号YZ-LD2406。"),
    ]
    g = fact_groups(convs)
    assert g[0] == g[1] and g[2] == g[3]
    assert len({g[0], g[2], g[4]}) == 3


def test_same_fact_pairs_swap_answers_within_a_fact_only():
    convs = [
        qa("工单多久升级？", "工单超过48小时未处理，自动升级到二线护航组。", row=1),
        qa("工单放两天会怎样？", "会。工单满48小时未处理就自动升级到二线护航组。", row=2),
        qa("栖夏多少钱？", "栖夏亚麻连衣裙售价299元，SKU编号YZ-LD2406。", row=3),
        Conversation.from_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]),
    ]
    pairs = same_fact_pairs(convs)
    assert [(p.row, p.messages[0].content, p.messages[-1].content) for p in pairs] == [
        (1, "工单多久升级？", "工单满48小时未处理就自动升级到二线护航组。"),
        (2, "工单放两天会怎样？", "工单超过48小时未处理，自动升级到二线护航组。"),
    ]


@pytest.mark.skipif(not DEMO.is_file(), reason="demo data not beside the checkout")
def test_demo_file_groups_roughly_by_fact():
    convs = [qa(r["instruction"], r["response"]) for r in map(json.loads, DEMO.read_text("utf-8").splitlines())]
    groups = fact_groups(convs)
    assert 38 <= len(set(groups)) <= 50  # 40 facts asked 3–4 ways
    assert len(same_fact_pairs(convs)) >= 140


def test_augment_hook_writes_what_it_added(tmp_path):
    convs = [qa("工单多久升级？", "工单超过48小时未处理，自动升级到二线护航组。"),
             qa("工单放两天会怎样？", "工单满48小时未处理就自动升级到二线护航组。")]
    cfg = TrainConfig(output_dir=str(tmp_path), augment_same_fact=True)
    out = augment_conversations(convs, cfg=cfg)
    assert out[:2] == convs and len(out) == 4
    lines = [json.loads(x) for x in (tmp_path / "augmented.jsonl").read_text("utf-8").splitlines()]
    assert [x["source"] for x in lines] == ["same_fact", "same_fact"]
    assert lines[0]["messages"][-1]["content"] == convs[1].messages[-1].content


def test_standalone_turns_keep_system_and_skip_the_first_turn(tmp_path):
    conv = Conversation.from_messages([
        {"role": "system", "content": "你是云栈客服。"},
        {"role": "user", "content": "客户申请退款2600元，能直接通过吗？"},
        {"role": "assistant", "content": "不可以，超过2000元要双签。"},
        {"role": "user", "content": "审批通过后多久到账？"},
        {"role": "assistant", "content": "原路退回3个工作日内到账。"},
        {"role": "user", "content": "退到钱包呢？"},
        {"role": "assistant", "content": "退到云栈钱包2小时内到账。"},
    ], row=7)
    single = qa("工单多久升级？", "48小时。")
    turns = standalone_turns([conv, single])
    assert [t.to_dict()["messages"] for t in turns] == [
        [{"role": "system", "content": "你是云栈客服。"}, {"role": "user", "content": "审批通过后多久到账？"},
         {"role": "assistant", "content": "原路退回3个工作日内到账。"}],
        [{"role": "system", "content": "你是云栈客服。"}, {"role": "user", "content": "退到钱包呢？"},
         {"role": "assistant", "content": "退到云栈钱包2小时内到账。"}],
    ]
    assert {t.row for t in turns} == {7}
    out = augment_conversations([conv, single], cfg=TrainConfig(output_dir=str(tmp_path), augment_turns=True))
    assert len(out) == 4
    sources = [json.loads(x)["source"] for x in (tmp_path / "augmented.jsonl").read_text("utf-8").splitlines()]
    assert sources == ["turn", "turn"]


def test_general_prompts_are_varied_bilingual_and_company_free():
    prompts = general_prompts()
    assert len(prompts) >= 100
    langs = {p["lang"] for p in prompts}
    assert langs == {"zh", "en"}
    text = " ".join(p["prompt"] for p in prompts)
    for company_word in ("云栈", "栈台", "工单", "客服", "Yunzhan"):
        assert company_word not in text
    assert len({p["prompt"] for p in prompts}) == len(prompts)


def test_general_eval_set_differs_from_replay_prompts():
    root = Path(__file__).resolve().parents[1]
    evalset = {json.loads(x)["question"] for x in (root / "evalsets/general.jsonl").read_text("utf-8").splitlines()}
    assert not evalset & {p["prompt"] for p in general_prompts()}


def test_replay_reads_the_cache_without_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    key = model_key("some/model")
    cache = tmp_path / "replay" / f"{key}.jsonl"
    cache.parent.mkdir(parents=True)
    with open(cache, "w", encoding="utf-8") as f:
        for p in general_prompts():
            f.write(json.dumps({"prompt": p["prompt"], "answer": "A:" + p["prompt"]}, ensure_ascii=False) + "\n")
    rows = general_replay("some/model", 5)  # a model load would fail here: everything is cached
    assert len(rows) == 5
    assert all(r.messages[1].content == "A:" + r.messages[0].content for r in rows)
    assert general_replay("some/model", 5) == rows  # same prompts every time


def test_trim_repetition_cuts_a_loop_and_keeps_normal_answers():
    from lorastudio.train.replay import trim_repetition

    loop = "The seasons come from the axial tilt. " + "The tilt makes sunlight hit us at other angles. " * 5
    assert trim_repetition(loop) == ("The seasons come from the axial tilt. "
                                     "The tilt makes sunlight hit us at other angles.")
    zh = "先说结论。" + "一周有七天，这是常识性的知识。" * 4
    assert trim_repetition(zh) == "先说结论。一周有七天，这是常识性的知识。"
    normal = "def is_prime(n):\n    if n < 2:\n        return False\n    return True\n"
    assert trim_repetition(normal) == normal
    assert trim_repetition("短。短。短。短。") == "短。短。短。短。"  # short sentences repeat legitimately


def test_fact_groups_never_link_answers_with_conflicting_numbers():
    template = [qa(f"订单YZ-{i:04d}到哪了？", f"登录云栈后在“我的订单”输入YZ-{i:04d}查看，物流信息每2小时更新一次。")
                for i in range(30)]
    assert len(set(fact_groups(template))) == 30  # alike wording, different orders
    assert same_fact_pairs(template) == []
    same = [qa("工单多久升级？", "工单超过48小时未处理，自动升级到二线护航组。"),
            qa("工单两天没人管呢？", "满48小时未处理就自动升级到二线护航组，分机6021。")]  # {48} ⊆ {48, 6021}
    groups = fact_groups(template + same)
    assert groups[-1] == groups[-2] and len(set(groups)) == 31


def test_same_fact_pairs_rotate_siblings_over_epochs():
    convs = [qa(f"退款多久到账{i}？", f"原路退回3个工作日内到账，第{i}种说法。", row=i) for i in (1, 2, 3)]
    convs.append(qa("栖夏多少钱？", "栖夏亚麻连衣裙售价299元。", row=4))
    convs.append(qa("工单多久升级？", "工单超过48小时未处理，自动升级。", row=5))
    convs.append(qa("工单放两天会怎样？", "工单满48小时未处理就自动升级。", row=6))
    pairs = same_fact_pairs(convs, cycle=3)
    by_row: dict[int, list] = {}
    for p in pairs:
        by_row.setdefault(p.row, []).append(p)
    # two siblings each: a different one in consecutive epochs, one row per epoch
    for row in (1, 2, 3):
        assert sorted(p.rotation for p in by_row[row]) == [(0, 3), (1, 3), (2, 3)]
        answers = [p.messages[-1].content for p in sorted(by_row[row], key=lambda p: p.rotation)]
        assert answers[0] != answers[1] and f"第{row}种" not in "".join(answers)
    # one sibling: the single pair, every epoch; no sibling: nothing
    assert [p.rotation for p in by_row[5]] == [None] and [p.rotation for p in by_row[6]] == [None]
    assert 4 not in by_row


def test_augment_per_epoch_writes_the_epoch_of_each_variant(tmp_path):
    convs = [qa(f"退款多久到账{i}？", f"原路退回3个工作日内到账，第{i}种说法。") for i in (1, 2, 3)]
    convs.append(qa("栖夏多少钱？", "栖夏亚麻连衣裙售价299元。"))
    cfg = TrainConfig(output_dir=str(tmp_path), augment_same_fact=True, augment_per_epoch=True, num_epochs=2.5)
    out = augment_conversations(convs, cfg=cfg)
    assert len(out) == 4 + 3 * 3  # three epochs (2.5 rounded up), a variant for each of the 3 siblings
    lines = [json.loads(x) for x in (tmp_path / "augmented.jsonl").read_text("utf-8").splitlines()]
    assert sorted({(x["epoch"], x["every"]) for x in lines}) == [(1, 3), (2, 3), (3, 3)]


def _fill_cache(home: Path, base: str, prompts: list[str]) -> None:
    cache = home / "replay" / f"{model_key(base)}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p, "answer": "A:" + p}, ensure_ascii=False) + "\n")


def test_replay_per_epoch_takes_new_prompts_each_epoch(tmp_path, monkeypatch):
    from lorastudio.train.replay import ordered_prompts, replay_conversations

    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    _fill_cache(tmp_path, "some/model", ordered_prompts())
    cfg = TrainConfig(base="some/model", replay_rows=20, augment_per_epoch=True, num_epochs=3)
    rows = replay_conversations([], cfg=cfg)
    assert len(rows) == 60 and len({r.messages[0].content for r in rows}) == 60
    assert [sum(r.rotation == (e, 3) for r in rows) for e in range(3)] == [20, 20, 20]
    # more epochs than the prompts last: as many epochs as they do, then repeats
    many = replay_conversations([], cfg=cfg.with_overrides({"replay_rows": 100}))
    assert len(many) == 100 * (len(ordered_prompts()) // 100)
    plain = replay_conversations([], cfg=cfg.with_overrides({"augment_per_epoch": False}))
    assert len(plain) == 20 and all(r.rotation is None for r in plain)


def test_ordered_prompts_mix_kinds_in_every_prefix():
    from lorastudio.train.replay import ordered_prompts

    kinds = {p["prompt"]: p["kind"] for p in general_prompts()}
    assert set(kinds.values()) == {"open", "fact"}
    half = ordered_prompts(0.5)
    assert sorted(half) == sorted(kinds) and len(set(half)) == len(half)
    assert sum(kinds[p] == "fact" for p in half[:40]) == 20
    assert all(kinds[p] == "open" for p in ordered_prompts(0.0)[:100])


def test_own_replay_prompts_file(tmp_path, monkeypatch):
    from lorastudio.train.config import ConfigError
    from lorastudio.train.replay import read_prompts, replay_conversations

    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path))
    txt = tmp_path / "mine.txt"
    txt.write_text("什么是复利？\n\nWhat is a haiku?\n", encoding="utf-8")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "什么是复利？"}\n{"prompt": "What is a haiku?"}\n', encoding="utf-8")
    assert read_prompts(txt) == read_prompts(jsonl) == ["什么是复利？", "What is a haiku?"]
    _fill_cache(tmp_path, "some/model", ["什么是复利？", "What is a haiku?"])
    rows = replay_conversations([], cfg=TrainConfig(base="some/model", replay_rows=5, replay_prompts=str(txt)))
    assert [r.messages[0].content for r in rows] == ["什么是复利？", "What is a haiku?"]
    with pytest.raises(ConfigError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok?"}\n{"question": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2"):
        read_prompts(bad)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------------------
# issue 13 levers: contrastive neighbour pairs and applied cases
# --------------------------------------------------------------------------------------------------
def _refund_rows() -> list[Conversation]:
    return [
        qa("大额退款有什么特别流程？", "单笔退款超过2000元要走双签：主管审批+财务复核。", row=1),
        qa("退款金额多少以上需要财务复核？", "单笔退款超过2000元需要财务复核，同时主管审批，叫双签。", row=2),
        qa("退款多久能到账？", "退款审核通过后原路退回，3个工作日内到账；退到云栈钱包2小时内到账。", row=3),
        qa("原路退款要几天？", "原路退款审核通过后3个工作日内到账；退到云栈钱包2小时内。", row=4),
        qa("栖夏连衣裙多少钱？", "栖夏亚麻连衣裙售价299元，SKU编号YZ-LD2406。", row=5),
        qa("栖夏是什么面料？", "栖夏亚麻连衣裙面料55%亚麻+45%粘胶，售价299元。", row=6),
    ]


def test_neighbour_facts_finds_the_topic_next_door():
    from lorastudio.train.augment import neighbour_facts

    convs = _refund_rows()
    groups = fact_groups(convs)
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]
    near = neighbour_facts(convs, groups, k=1)
    assert near[groups[0]] == [groups[2]] and near[groups[2]] == [groups[0]]


def test_contrast_pairs_answer_each_question_with_its_own_answer():
    from lorastudio.train.augment import contrast_pairs

    convs = _refund_rows()
    pairs = contrast_pairs(convs, cycle=1, k=1)
    assert pairs and all(p.rotation is None for p in pairs)
    by_question = {c.messages[0].content: c.messages[-1].content for c in convs}
    for p in pairs:
        first, second = p.messages[0].content.split("另外，")
        assert p.messages[-1].content == by_question[first] + "\n" + by_question[second]
        assert fact_groups([qa(first, by_question[first]), qa(second, by_question[second])]) == [0, 1]
    assert len(pairs) == 3  # every other question in an epoch
    # per epoch: the other half the next epoch, so each question is paired once over two epochs
    cyc = contrast_pairs(convs, cycle=2, k=1)
    assert sorted({p.rotation for p in cyc}) == [(0, 2), (1, 2)]
    assert sorted(p.row for p in cyc) == [1, 2, 3, 4, 5, 6]


def test_contrast_passes_keep_the_pairs_to_the_first_passes():
    from lorastudio.train.augment import contrast_pairs

    convs = _refund_rows()
    every = contrast_pairs(convs, cycle=3, k=1)
    assert sorted({p.rotation[0] for p in every}) == [0, 1, 2]
    two = contrast_pairs(convs, cycle=3, k=1, passes=2)
    assert sorted({p.rotation[0] for p in two}) == [0, 1]
    assert sorted(p.row for p in two) == [1, 2, 3, 4, 5, 6]  # two passes still pair every question once
    assert [p.to_dict() for p in two] == [p.to_dict() for p in every if p.rotation[0] < 2]
    assert contrast_pairs(convs, cycle=3, k=1, passes=5) == every
    assert contrast_pairs(convs, cycle=1, k=1, passes=1) == contrast_pairs(convs, cycle=1, k=1)  # no passes to keep


def test_contrast_random_pairs_a_share_with_facts_that_are_no_neighbours():
    from lorastudio.data import validate
    from lorastudio.data.facts import fact_groups
    from lorastudio.train.augment import contrast_pairs, contrast_plan

    convs = validate(str(DEMO)).conversations
    units, near = contrast_plan(convs)
    groups = fact_groups(units)
    question = {u.messages[-2].content: i for i, u in enumerate(units)}

    def partners(pairs):
        out = []
        for p in pairs:
            first, second = p.messages[-2].content.split("另外，")
            i = next(question[q] for q in question if first.rstrip("？?") == q.rstrip("？?"))
            j = next(question[q] for q in question if second.rstrip("？?") == q.rstrip("？?"))
            out.append((i, j))
        return out

    plain = contrast_pairs(convs, seed=0, cycle=3)
    assert contrast_pairs(convs, seed=0, cycle=3, random_share=0.0) == plain
    assert all(j in near[i] for i, j in partners(plain))
    mixed = contrast_pairs(convs, seed=0, cycle=3, random_share=1.0)
    assert len(mixed) == len(plain)  # as many pairs (the same tokens, about), other partners
    far = [(i, j) for i, j in partners(mixed) if j not in near[i]]
    assert len(far) == len(mixed) and all(groups[i] != groups[j] for i, j in far)
    half = partners(contrast_pairs(convs, seed=0, cycle=3, random_share=0.5))
    assert 0.3 < sum(j not in near[i] for i, j in half) / len(half) < 0.7
    with pytest.raises(ConfigError, match="contrast_random"):
        TrainConfig(contrast_random=1.5).validate()


def test_contrast_joiners_vary_the_wording_not_the_pairs_and_neighbours_widen_the_reach():
    from lorastudio.data import validate
    from lorastudio.train.augment import JOINERS_ZH, contrast_pairs, contrast_plan

    convs = validate(str(DEMO)).conversations
    plain = contrast_pairs(convs, seed=0, cycle=3)
    varied = contrast_pairs(convs, seed=0, cycle=3, joiners="varied")
    assert len(varied) == len(plain)
    used = set()
    for p, v in zip(plain, varied, strict=True):
        assert p.messages[-1].content == v.messages[-1].content and p.row == v.row  # same pair, same answers
        first, second = p.messages[-2].content.split("另外，")
        question = v.messages[-2].content
        assert question.startswith(first) and question.endswith(second)
        used.add(question[len(first):len(question) - len(second)])
    assert used == set(JOINERS_ZH)  # every joiner drawn, the plain "…？…？" one included
    _, near2 = contrast_plan(convs, k=2)
    _, near3 = contrast_plan(convs, k=3)
    assert all(set(a) <= set(b) for a, b in zip(near2, near3, strict=True))
    assert sum(map(len, near3)) > sum(map(len, near2))
    wide = contrast_pairs(convs, seed=0, cycle=3, k=3)
    assert len(wide) == len(plain)  # the same number of pairs: the reach widens, the tokens stay
    with pytest.raises(ConfigError, match="contrast_joiners"):
        TrainConfig(contrast_joiners="and").validate()
    with pytest.raises(ConfigError, match="contrast_neighbours"):
        TrainConfig(contrast_neighbours=0).validate()


def test_contrast_pairs_need_a_neighbour():
    from lorastudio.train.augment import contrast_pairs

    assert contrast_pairs([qa("工单多久升级？", "工单超过48小时未处理自动升级。")]) == []
    unrelated = [qa("工单多久升级？", "工单超过48小时未处理自动升级。"), qa("栖夏多少钱？", "栖夏售价299元。")]
    assert contrast_pairs(unrelated, k=1, cycle=1) == []  # nothing in common: not neighbours
    close = [qa("工单多久升级", "工单超过48小时未处理自动升级。"), qa("工单号什么格式？", "工单编号格式为YZ-年月日。")]
    assert [p.messages[0].content for p in contrast_pairs(close, k=1, cycle=1)] == ["工单多久升级？另外，工单号什么格式？"]


def test_case_variants_stay_on_the_same_side_of_every_threshold():
    import random

    from lorastudio.train.augment import case_variants

    rng = random.Random(0)
    row = qa("我想给客户补偿150元券，需要谁批？", "150元在50-200元区间，需要组长审批。超过200元要主管审批。")
    out = case_variants(row, rng, 5)
    assert len(out) == 5
    for v in out:
        x = int(v.messages[0].content.removeprefix("我想给客户补偿").split("元")[0])
        assert 50 < x < 200 and x != 150 and x % 10 == 0
        assert v.messages[1].content.startswith(f"{x}元在50-200元区间")
    late = qa("客户签收4天后才说杯子碎了，还能走破损快赔吗？", "不能。破损快赔要求签收后72小时内申请，4天已超期。")
    for v in case_variants(late, rng, 3):  # 72小时 = 3天: every new day count is still too late
        days = int(v.messages[0].content.removeprefix("客户签收").split("天")[0])
        assert days > 3 and f"{days}天已超期" in v.messages[1].content
    # a rule question is not a case; an amount no threshold bounds is left alone
    assert case_variants(qa("补偿金额超过200元怎么走流程？", "超过200元需主管审批。"), rng, 3) == []
    assert case_variants(qa("帮我算算3件共多少钱？", "共897元。"), rng, 3) == []


def test_rule_cases_add_an_amount_past_the_threshold_and_keep_the_answer():
    import random

    from lorastudio.train.augment import rule_cases

    rng = random.Random(1)
    row = qa("退款金额多少以上需要财务复核？", "单笔退款超过2000元时需要财务复核，同时还要主管审批。")
    out = rule_cases(row, rng, 4)
    assert len(out) == 4
    for v in out:
        q = v.messages[0].content
        assert q.startswith("退款金额多少以上需要财务复核？") and q.endswith("元呢？")
        assert int(q.split("比如")[-1].split("要是")[-1].split("元")[0]) > 2000
        assert v.messages[1].content == row.messages[1].content
    # the threshold must be of the kind asked about, and a question naming an amount is a case already
    assert rule_cases(qa("风控复审要多久出结果？", "风控组1个工作日内给出结论；30天内退款≥5次触发。"), rng, 3) == []
    assert rule_cases(qa("工单放了两天会升级吗？", "会。工单满48小时未处理就会升级。"), rng, 3) == []


def test_augment_hook_adds_contrast_and_case_rows(tmp_path):
    convs = _refund_rows() + [qa("客户要退一台3500元的设备，客服能直接退吗？",
                                 "不能直接退。单笔退款超过2000元需走双签。", row=7)]
    cfg = TrainConfig(output_dir=str(tmp_path), augment_same_fact=True, augment_contrast=True,
                      augment_cases=True, augment_per_epoch=True, num_epochs=3)
    out = augment_conversations(convs, cfg=cfg)
    lines = [json.loads(x) for x in (tmp_path / "augmented.jsonl").read_text("utf-8").splitlines()]
    sources = {x["source"] for x in lines}
    assert {"same_fact", "contrast", "case"} <= sources
    assert len(out) == len(convs) + len(lines)
    cases = [x for x in lines if x["source"] == "case"]
    assert {x["row"] for x in cases} >= {2, 7} and all("epoch" in x for x in cases)
    from lorastudio.train.augment import contrast_pairs

    pairs = [x["messages"][-2]["content"] for x in lines if x["source"] == "contrast"]  # the config's joiners
    assert pairs == [c.messages[-2].content for c in contrast_pairs(convs, cycle=3, joiners="varied")]
    assert TrainConfig().contrast_joiners == "varied"
    off = augment_conversations(convs, cfg=TrainConfig(output_dir=str(tmp_path), augment_same_fact=True))
    assert not {json.loads(x)["source"] for x in (tmp_path / "augmented.jsonl").read_text("utf-8").splitlines()} - {
        "same_fact"} and len(off) < len(out)


def test_new_levers_are_resume_settings():
    from lorastudio.train.config import resume_keys

    assert {"augment_contrast", "augment_cases", "contrast_passes", "contrast_neighbours",
            "contrast_joiners"} <= set(resume_keys())
    with pytest.raises(ConfigError, match="contrast_passes"):
        TrainConfig(contrast_passes=-1).validate()
    assert TrainConfig().augment_contrast is False and TrainConfig().augment_cases is False


def test_hard_eval_set_is_held_out_and_well_formed():
    import difflib

    root = Path(__file__).resolve().parents[1]
    items = [json.loads(x) for x in (root / "evalsets/yunzhan_hard.jsonl").read_text("utf-8").splitlines()]
    assert len(items) >= 60
    kinds = {k: sum(i["kind"] == k for i in items) for k in ("apply", "neighbour", "two", "scenario")}
    assert sum(kinds.values()) == len(items) and kinds["apply"] >= len(items) // 3 and min(kinds.values()) >= 10
    assert {f for i in items for f in i["facts"]} == set(range(1, 41))
    assert all(i["fact"] == i["facts"][0] and i["must_contain"] for i in items)
    assert all(len(i["facts"]) == 2 for i in items if i["kind"] == "two")
    if DEMO.is_file():
        train = [json.loads(x)["instruction"] for x in DEMO.read_text("utf-8").splitlines()]
        for item in items:  # reworded and new cases, never a training question
            assert max(difflib.SequenceMatcher(None, item["question"], q).ratio() for q in train) < 0.7, item


def test_contrast_pairs_of_the_demo_file_are_the_ones_measured():
    """The pairs `augment_contrast` trains on the demo file (seed 0, 3 epochs) are exactly the rows the
    session-4 sweep measured (bench/quality/results/session4_contrast_rows.jsonl): a refactor of how the
    questions are collected must not change the lever the default rests on."""
    from lorastudio.data import validate
    from lorastudio.train.augment import contrast_pairs

    measured = Path(__file__).resolve().parents[1] / "bench" / "quality" / "results" / "session4_contrast_rows.jsonl"
    expected = [json.loads(line) for line in measured.read_text("utf-8").splitlines()]
    pairs = contrast_pairs(validate(str(DEMO)).conversations, seed=0, cycle=3)
    got = [{**p.to_dict(), "row": p.row, "epoch": p.rotation[0] + 1} for p in pairs]
    assert got == [{k: e[k] for k in ("messages", "row", "epoch")} for e in expected]


def test_contrast_pairs_use_every_turn_of_multi_turn_rows():
    from lorastudio.train.augment import contrast_pairs, contrast_plan, question_turns

    system = {"role": "system", "content": "你是云栈客服助手。"}

    def conv(*turns: str, row: int) -> Conversation:
        messages = [system] + [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return Conversation.from_messages(messages, row=row)

    convs = [conv("退款多久能到账？", "原路退回3个工作日内到账；退到云栈钱包2小时内到账。",
                  "大额退款要谁批？", "单笔退款超过2000元要走双签：主管审批+财务复核。", row=1),
             conv("客户申请退款2600元可以直接通过吗？", "不可以，单笔退款超过2000元需双签：主管审批+财务复核。", row=2),
             conv("栖夏连衣裙多少钱？", "栖夏亚麻连衣裙售价299元。", "它是什么面料？", "栖夏面料55%亚麻+45%粘胶，售价299元。",
                  row=3)]
    units = question_turns(convs)
    assert [u.messages[1].content for u in units] == ["退款多久能到账？", "大额退款要谁批？", "客户申请退款2600元可以直接通过吗？",
                                                      "栖夏连衣裙多少钱？", "它是什么面料？"]
    assert all(u.messages[0] == convs[0].messages[0] for u in units)  # the system message kept
    questions, candidates = contrast_plan(convs, k=1)
    assert len(questions) == 5 and any(candidates)
    answers = {u.messages[1].content: u.messages[2].content for u in units}
    pairs = contrast_pairs(convs, k=1, cycle=2)
    assert pairs and {p.rotation for p in pairs} <= {(0, 2), (1, 2)}
    for p in pairs:
        assert p.messages[0].content == system["content"] and len(p.messages) == 3
        first, second = p.messages[1].content.split("另外，")
        assert p.messages[2].content == answers[first] + "\n" + answers[second]
    # the single-turn file is unchanged: its rows are its questions
    single = _refund_rows()
    assert question_turns(single) == single


def test_grounded_copies_put_the_rows_the_engine_reads_beside_each_turn():
    """augment_grounded: each copy is what `Knowledge.ground` gives the engine for that turn (the rows in a
    shuffled order), its own row among them; later turns keep their conversation; a share per pass."""
    from lorastudio.data import validate
    from lorastudio.knowledge import HEADER, ROW
    from lorastudio.train.augment import grounded_copies

    convs = validate(str(DEMO)).conversations
    every = grounded_copies(convs, 1.0, 6, "你是客服。", seed=0)
    assert len(every) == len(convs)  # each demo row shares bigrams with itself: one copy per row
    firsts = 0
    for conv, copy in zip(convs, every, strict=True):
        system, question, answer = (m.content for m in copy.messages)
        assert system.startswith("你是客服。\n\n" + HEADER["zh"]) and copy.row == conv.row
        own = ROW["zh"].format(q=conv.messages[-2].content.strip(), a=conv.messages[-1].content.strip())
        assert own in system and (question, answer) == (conv.messages[-2].content, conv.messages[-1].content)
        firsts += system.startswith("你是客服。\n\n" + HEADER["zh"] + own)
    assert firsts < len(convs) / 2  # shuffled: the right row is not always the first
    per_pass = grounded_copies(convs, 0.5, 6, seed=1, cycle=4)
    assert 0.4 * 4 * len(convs) < len(per_pass) < 0.6 * 4 * len(convs)
    assert {c.rotation for c in per_pass} == {(e, 4) for e in range(4)}
    multi = [Conversation.from_messages([{"role": r, "content": c} for r, c in (
        ("system", "s"), ("user", "退款2600元能直接通过吗？"), ("assistant", "不能，需双签。"),
        ("user", "审批后多久到账？"), ("assistant", "3个工作日内。"))])]
    turns = grounded_copies(multi, 1.0, 6)
    assert [len(c.messages) for c in turns] == [3, 5]  # the second turn's copy is its conversation so far
    assert turns[1].messages[0].content.startswith("s\n\n") and "退款2600元能直接通过吗？\n审批后多久到账？" in \
        turns[1].messages[0].content
    with pytest.raises(ConfigError, match="augment_grounded"):
        TrainConfig(augment_grounded=1.5).validate()
    with pytest.raises(ConfigError, match="knowledge_rows > 0"):
        TrainConfig(augment_grounded=0.5, knowledge_rows=0).validate()
