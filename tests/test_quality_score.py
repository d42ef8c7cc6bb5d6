"""bench/quality/score.py's engines: on a CPU that runs the base in llama.cpp the answers come from
the llama.cpp child (lorastudio.engines.batch, with the adapter), equal to the transformers path's on
the same f16 weights, scored the same way; `--engine`, `--sets`, `--limit` and `--scales` rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402

from lorastudio import llamacpp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
needs_llama = pytest.mark.skipif(not llamacpp.available(),
                                 reason="llama-cpp-python is not installed (pip install 'lorastudio[llamacpp]')")


def _load_score():
    sys.path.insert(0, str(ROOT / "bench" / "quality"))
    spec = importlib.util.spec_from_file_location("quality_score", ROOT / "bench" / "quality" / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


score = _load_score()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model rounded to f16 (a directory for transformers), its f16 GGUF, an adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorastudio.export import write_gguf

    root = tmp_path_factory.mktemp("quality_score")
    base = build_tiny_model(root / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.save_pretrained(root / "ref")
    tokenizer.save_pretrained(root / "ref")
    (root / "gguf").mkdir()
    gguf = root / "gguf" / "tiny.gguf"
    write_gguf(model, tokenizer, gguf, "f16", name="tiny")
    return {"ref": root / "ref", "gguf": gguf,
            "adapter": build_adapter(root / "ref", root / "adapter", seed=1, scale=0.5)}


@pytest.fixture
def short(monkeypatch, tmp_path):
    monkeypatch.setenv("LORASTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORASTUDIO_ENGINE", raising=False)
    # few new tokens: a random model's near-ties part later
    monkeypatch.setattr(score, "SETS", {k: (f, 10) for k, (f, _cap) in score.SETS.items()})
    import lorastudio.models

    real = lorastudio.models.load_model  # fp32 also where bf16 is native: compare with the f16 GGUF's weights
    monkeypatch.setattr(lorastudio.models, "load_model", lambda model_id, dtype=None, **kw: real(model_id, "fp32", **kw))


@needs_llama
def test_llamacpp_answers_equal_the_transformers_ones_and_score_the_same(tiny, short, tmp_path, capsys):
    common = ["--adapter", str(tiny["adapter"]), "--sets", "hard,facts", "--limit", "3"]
    score.main(["--base", str(tiny["gguf"]), "--out", str(tmp_path / "llama.json"), *common])  # auto
    err = capsys.readouterr().err
    assert "engine: llama.cpp" in err
    score.main(["--base", str(tiny["ref"]), "--out", str(tmp_path / "tf.json"), "--engine", "transformers", *common])
    import torch

    assert torch.is_grad_enabled()  # scoring in-process leaves autograd on (it once switched it off for good)
    fast = json.loads((tmp_path / "llama.json").read_text(encoding="utf-8"))
    slow = json.loads((tmp_path / "tf.json").read_text(encoding="utf-8"))
    assert (fast["engine"], slow["engine"]) == ("llama.cpp", "transformers")
    assert fast["hard_n"] == fast["facts_n"] == 3 and "general" not in fast and fast["limit"] == 3
    assert len(fast["hard_answers"]) == 3 and any(fast["hard_answers"])
    for key in ("hard_answers", "fact_answers", "hard", "hard_ok", "hard_by_kind", "facts", "fact_ok"):
        assert fast[key] == slow[key], key


@needs_llama
def test_the_llamacpp_child_answers_with_the_adapter(tiny, short, tmp_path):
    score.main(["--base", str(tiny["gguf"]), "--out", str(tmp_path / "base.json"), "--sets", "hard", "--limit", "4"])
    score.main(["--base", str(tiny["gguf"]), "--adapter", str(tiny["adapter"]), "--out", str(tmp_path / "a.json"),
                "--sets", "hard", "--limit", "4"])
    base = json.loads((tmp_path / "base.json").read_text(encoding="utf-8"))
    tuned = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert base["engine"] == tuned["engine"] == "llama.cpp"
    assert base["hard_answers"] != tuned["hard_answers"]


@needs_llama
def test_both_engines_score_an_adapter_at_its_reading_strength(tiny, short, tmp_path):
    """An adapter saved with knowledge_strength 0.5 is scored reading its rows at half strength, by the llama.cpp
    child (the product's engine) and in-process by transformers alike: its answers are those of a copy whose B
    matrices are halved, and not those of the adapter at full strength."""
    import shutil

    from lorastudio.knowledge import write_knowledge

    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in [
        ("工单超过多久会升级？", "工单超过48小时未处理会自动升级到二线护航组。"),
        ("满意度低于3分怎么办？", "满意度低于3分会自动重开并转质检组。")]]
    adapters = {"half": shutil.copytree(tiny["adapter"], tmp_path / "half"),
                "full": shutil.copytree(tiny["adapter"], tmp_path / "full"),
                "halved": build_adapter(tiny["ref"], tmp_path / "halved", seed=1, scale=0.25)}
    for path in adapters.values():
        write_knowledge(path, rows)
    (adapters["half"] / "train_config.yaml").write_text("knowledge_rows: 6\nknowledge_strength: 0.5\n", "utf-8")
    got = {}
    for name, adapter, base, engine in [("llama", "half", "gguf", "llama.cpp"), ("tf", "half", "ref", "transformers"),
                                        ("halved", "halved", "gguf", "llama.cpp"), ("full", "full", "gguf", "llama.cpp")]:
        out = tmp_path / f"{name}.json"
        score.main(["--base", str(tiny[base]), "--adapter", str(adapters[adapter]), "--out", str(out),
                    "--engine", engine, "--sets", "hard,facts", "--limit", "3"])
        got[name] = json.loads(out.read_text(encoding="utf-8"))
    assert got["llama"]["knowledge_strength"] == got["tf"]["knowledge_strength"] == 0.5
    assert got["halved"]["knowledge_strength"] == got["full"]["knowledge_strength"] == 1.0
    answers = {name: r["hard_answers"] + r["fact_answers"] for name, r in got.items()}
    assert answers["llama"] == answers["tf"] == answers["halved"] != answers["full"]


def test_engine_rules(tiny, short, monkeypatch):
    args = score.parse_args(["--base", str(tiny["ref"]), "--out", "x.json"])
    assert score.pick_engine(args)[0] == "transformers"  # not a GGUF
    args = score.parse_args(["--base", str(tiny["ref"]), "--out", "x.json", "--engine", "llama.cpp"])
    with pytest.raises(SystemExit, match="llama.cpp engine cannot run"):
        score.pick_engine(args)
    args = score.parse_args(["--base", str(tiny["gguf"]), "--adapter", str(tiny["adapter"]), "--out", "x.json",
                             "--scales", "1,0.5"])
    engine, reason = score.pick_engine(args)
    assert engine == "transformers" and "--scales" in reason
    args.engine = "llama.cpp"
    with pytest.raises(SystemExit, match="--scales other than 1 need --engine transformers"):
        score.pick_engine(args)
    if llamacpp.available():
        assert score.pick_engine(score.parse_args(["--base", str(tiny["gguf"]), "--out", "x.json"]))[0] == "llama.cpp"
        monkeypatch.setenv("LORASTUDIO_ENGINE", "transformers")
        assert score.pick_engine(score.parse_args(["--base", str(tiny["gguf"]), "--out", "x.json"]))[0] == \
            "transformers"
    assert score.parse_args(["--out", "x", "--no-hard"]).sets == ["facts", "general"]
    with pytest.raises(SystemExit):
        score.parse_args(["--out", "x", "--sets", "hard,nope"])
    with pytest.raises(SystemExit):  # a company without eval sets
        score.parse_args(["--out", "x", "--evals", "nobody"])


def test_rows_and_their_order_are_varied_for_the_scoring_only(tmp_path, tiny):
    rows = [("退款多久到账？", "3个工作日内到账。"), ("退款要审批吗？", "超过2000元需主管审批。"),
            ("会员怎么评级？", "每年1月1日重新评级。")]
    (tmp_path / "knowledge.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n" for q, a in rows), "utf-8")
    question = [{"question": "退款多久能到账？审批要多久？"}]

    def system(*extra):
        args = score.parse_args(["--base", "b", "--adapter", str(tmp_path), "--out", "x.json", *extra])
        return args, score.grounded_chats(args, question)[0][0]["content"]

    args, product = system()
    assert not score.rows_changed(args) and product.index("3个工作日") < product.index("2000元")
    assert "评级" not in product  # shares no bigram with the question: never sent
    args, last = system("--row-order", "closest-last")
    assert score.rows_changed(args) and last.index("2000元") < last.index("3个工作日")  # the closest next to the question
    _, one = system("--rows", "1")
    assert "3个工作日" in one and "2000元" not in one
    args, none = system("--rows", "1", "--no-knowledge")
    assert none == question[0]["question"]  # no rows at all: the question alone
    args = score.parse_args(["--base", str(tiny["gguf"]), "--adapter", str(tmp_path), "--out", "x.json", "--rows", "4"])
    assert score.pick_engine(args)[0] == "transformers"
    args.engine = "llama.cpp"
    with pytest.raises(SystemExit, match="--rows and --row-order need --engine transformers"):
        score.pick_engine(args)
    with pytest.raises(SystemExit):
        score.parse_args(["--out", "x", "--rows", "-1"])


@pytest.mark.parametrize("evals", ["yunzhan", "beichen", "harborpine"])
def test_scoring_is_the_sweeps(tmp_path, evals):
    from sweep import fact_score, read_jsonl
    from sweep import score as sweep_score

    items = {name: read_jsonl(score.set_file(name, evals)) for name in score.SETS}
    # answers that hold the key strings of every third question
    answers = {name: [" ".join(k if isinstance(k, str) else k[-1] for k in q["must_contain"]) if i % 3 == 0 else "?"
                      for i, q in enumerate(qs)] for name, qs in items.items()}
    args = score.parse_args(["--out", str(tmp_path / "q.json"), "--evals", evals])
    score.write(args, items, answers, tmp_path / "q.json", 1.0, 1.0, "llama.cpp", "test")
    res = json.loads((tmp_path / "q.json").read_text(encoding="utf-8"))
    for name, key in (("facts", "facts"), ("general", "general"), ("hard", "hard")):
        assert res[key] == sweep_score(answers[name], items[name])[0] > 0
    assert res["facts_by_fact"] == fact_score(sweep_score(answers["facts"], items["facts"])[1], items["facts"])
    assert sum(v[1] for v in res["hard_by_kind"].values()) == len(items["hard"]) == res["hard_n"]
    assert sum(v[0] for v in res["hard_by_kind"].values()) == res["hard"]
