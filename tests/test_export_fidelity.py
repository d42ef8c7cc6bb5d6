"""The export fidelity gate on tiny Qwen2 models: the GGUF run in llama.cpp vs base + adapter in
transformers, the check questions, the Modelfile rendered as Ollama renders it, and exports broken on
purpose (damaged weights, a wrong template) that the gate must flag."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_adapter, build_tiny_model  # noqa: E402
from train_fixtures import ROWS, write_rows  # noqa: E402

from lorastudio import export, export_check, llamacpp  # noqa: E402
from lorastudio.cli import main  # noqa: E402
from lorastudio.modelfile import (  # noqa: E402
    ModelfileError,
    ollama_prompt,
    parse_modelfile,
    render_go_template,
)

needs_llama = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")

# The template LoRA Studio wrote before this gate existed: it prints .System and then every message,
# but Ollama keeps the system message inside .Messages, so the system prompt came out twice.
OLD_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)

CONVERSATIONS = [
    [{"role": "user", "content": "工单超过多久会升级？"}],
    [{"role": "system", "content": "你是云栈科技的客服助手。"}, {"role": "user", "content": "What is the price?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "满意度低于3分怎么办？"},
     {"role": "assistant", "content": "自动重开并转质检组复核。"}, {"role": "user", "content": "谁复核？"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"},
     {"role": "user", "content": "Line one\nline two  "}],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    base = build_tiny_model(root / "base")
    adapter = build_adapter(base, root / "adapter", seed=1)
    data = write_rows(root / "train.jsonl")
    (adapter / "train_config.yaml").write_text(f"data: {data}\nbase: tiny\n", encoding="utf-8")
    return {"root": root, "base": base, "adapter": adapter, "data": data}


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# --------------------------------------------------------------------------------------------
# the Modelfile, rendered the way Ollama renders it


@pytest.mark.parametrize("which", ["tiny", "tiny-random"])
@pytest.mark.parametrize("system", [None, "你是云栈科技的客服助手。"])
def test_modelfile_template_renders_the_training_prompt(tiny, which, system):
    """ChatML system/user/assistant turns: Ollama's rendering of our TEMPLATE (with its SYSTEM, the
    training system prompt or the template's default) = the tokenizer's chat template through the
    trainer's render_prompt, character for character."""
    from lorastudio.inference import render_prompt
    from lorastudio.models import resolve_model

    tok = _tokenizer(tiny["base"] if which == "tiny" else resolve_model("tiny-random"))
    mf = parse_modelfile(export.ollama_modelfile(tok, "x.gguf", system))
    assert mf.source == "./x.gguf" and "<|im_end|>" in mf.parameter("stop")
    for conv in CONVERSATIONS:
        want = render_prompt(conv, tok, system_prompt=system)
        assert ollama_prompt(mf, conv) == want
    # The old template printed the system prompt twice under Ollama's rules; the renderer sees it.
    old = parse_modelfile(export.ollama_modelfile(tok, "x.gguf", system))
    old.template = OLD_TEMPLATE
    rendered = ollama_prompt(old, CONVERSATIONS[0])
    assert rendered != render_prompt(CONVERSATIONS[0], tok, system_prompt=system)
    assert rendered.count("<|im_start|>system") == 2


def test_go_template_subset():
    data = {"System": "", "Messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert render_go_template("x  {{- .System -}}  \n y", data) == "xy"
    assert render_go_template("{{ if .System }}S{{ else }}none{{ end }}|", data) == "none|"
    tpl = '{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}{{ else if .Content }}A:{{ .Content }}{{ end }};{{ end }}'
    assert render_go_template(tpl, data) == "U:a;A:b;"
    assert render_go_template("{{/* note */}}{{ range .Messages }}{{ $.System }}.{{ end }}", data) == ".."
    for bad in ["{{ .Prompt | upper }}", "{{ range .Messages }}x", "{{ template \"t\" }}", "{{ .Missing }}"]:
        with pytest.raises(ModelfileError):
            render_go_template(bad, data)


def test_parse_modelfile():
    text = ('# comment\nFROM ./m.gguf\n\nTEMPLATE """line1\n{{ .Content }}\n"""\nSYSTEM """多行\n系统"""\n'
            'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\nPARAMETER temperature 0\n')
    mf = parse_modelfile(text)
    assert mf.source == "./m.gguf" and mf.template == "line1\n{{ .Content }}\n" and mf.system == "多行\n系统"
    assert mf.parameter("stop") == ["<|im_end|>", "<|endoftext|>"] and mf.parameter("temperature") == ["0"]
    with pytest.raises(ModelfileError, match="no FROM"):
        parse_modelfile('TEMPLATE """x"""\n')
    with pytest.raises(ModelfileError, match="never closes"):
        parse_modelfile('FROM ./m.gguf\nSYSTEM """open\n')
    with pytest.raises(ModelfileError, match="line 2: unknown instruction"):
        parse_modelfile("FROM ./m.gguf\nBOGUS 1\n")


# --------------------------------------------------------------------------------------------
# which questions


def test_check_questions_come_from_the_training_file(tiny, tmp_path):
    got, source = export_check.check_questions(tiny["adapter"])
    assert source.startswith("training data ") and str(tiny["data"]) in source
    assert [q[-1]["content"] for q in got] == [q for q, _ in ROWS[:5]]
    # distinct, in file order, and only up to the first user turn of a multi-turn row
    rows = [{"messages": [{"role": "user", "content": "退货需要多久？"}, {"role": "assistant", "content": "七天内可以退货。"},
                          {"role": "user", "content": "需要发票吗？"}, {"role": "assistant", "content": "需要，请附上发票。"}]},
            {"messages": [{"role": "user", "content": "客服电话是多少？"}, {"role": "assistant", "content": "分机6021。"}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who reviews tickets?"},
                          {"role": "assistant", "content": "The QA team."}]}]
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    got, _ = export_check.check_questions(tiny["adapter"], 5, f)
    assert got == [[{"role": "user", "content": "退货需要多久？"}], [{"role": "user", "content": "客服电话是多少？"}],
                   [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who reviews tickets?"}]]
    assert export_check.check_questions(tiny["adapter"], 2, f)[0] == got[:2]
    same = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": str(i)}] for i in range(3)]
    assert export_check._first_questions(same, 5) == [[{"role": "user", "content": "q"}]]
    with pytest.raises(export_check.CheckError, match="does not exist"):
        export_check.check_questions(tiny["adapter"], 5, tmp_path / "missing.jsonl")


def test_check_questions_fall_back_to_augmented_then_built_in(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny["adapter"], adapter)
    (adapter / "train_config.yaml").write_text("data: /nowhere/train.jsonl\n", encoding="utf-8")
    got, source = export_check.check_questions(adapter, 3)
    assert source.startswith("built-in") and len(got) == 3
    assert got[0] == [{"role": "user", "content": export_check.FALLBACK_QUESTIONS[0]}]
    (adapter / "augmented.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "改写的问题"}, {"role": "assistant", "content": "答"}],
         "source": "same_fact", "row": 1}, ensure_ascii=False) + "\n", encoding="utf-8")
    got, source = export_check.check_questions(adapter, 3)
    assert "augmented.jsonl" in source and got == [[{"role": "user", "content": "改写的问题"}]]


# --------------------------------------------------------------------------------------------
# the gate


@needs_llama
def test_f16_export_passes_the_gate_and_writes_its_report(tiny, tmp_path):
    out = tmp_path / "f16" / "tiny.gguf"
    result = export.export_gguf(tiny["adapter"], out, "f16")
    rep = result.fidelity
    assert rep["passed"] is True and rep["problems"] == []
    assert rep["total"] == 5 and rep["identical"] >= 4 and rep["required"] == 4
    assert all(q["prompt_ids_match"] and q["modelfile_prompt_match"] for q in rep["questions"])
    assert [q["question"] for q in rep["questions"]] == [q for q, _ in ROWS[:5]]
    # the tokens are real: 16 new tokens (or fewer ending in a stop), decoded to the texts reported
    for q in rep["questions"]:
        assert 0 < len(q["adapter_tokens"]) <= 16 and q["adapter_text"]
    on_disk = json.loads(Path(result.fidelity_file).read_text(encoding="utf-8"))
    assert Path(result.fidelity_file) == out.with_name("tiny.fidelity.json")
    assert on_disk["identical"] == rep["identical"] and set(rep["seconds"]) >= {"reference", "llamacpp", "total"}
    assert result.files == ["tiny.gguf", "Modelfile", "tiny.fidelity.json"]


@needs_llama
def test_the_reference_is_the_adapter_not_the_base(tiny, tmp_path):
    """An export of the *base* (adapter left out) must fail the gate: the check sees the adapter."""
    from lorastudio.export_check import check_gguf, check_questions, reference_greedy

    questions, _ = check_questions(tiny["adapter"])
    peft_model, tok, _ = export.load_peft(tiny["adapter"])
    ref = reference_greedy(peft_model, tok, questions, None)
    base_only = peft_model.unload()  # the base weights without the adapter
    gguf = tmp_path / "base.gguf"
    export.write_gguf(base_only, tok, gguf, "f16")
    rep = check_gguf(gguf, "f16", ref, tok)
    assert rep["passed"] is False and rep["identical"] < 4
    assert any("greedy tokens" in p for p in rep["problems"])


@needs_llama
def test_damaged_weights_fail_the_gate_loudly(tiny, tmp_path, monkeypatch, capsys):
    import torch

    real = export.write_gguf

    def damaged(model, tokenizer, path, dtype="f16", name="model"):
        with torch.no_grad():  # what a bad merge or a wrong tensor layout does: the MLP outputs are wrong
            for n, p in model.named_parameters():
                if "down_proj" in n:
                    p.mul_(-3.0)
        real(model, tokenizer, path, dtype, name)

    monkeypatch.setattr(export, "write_gguf", damaged)
    out = tmp_path / "bad.gguf"
    code = main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--no-verify"])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED fidelity" in captured.err and "what to do" in captured.err and "Traceback" not in captured.err
    rep = json.loads(out.with_name("bad.fidelity.json").read_text(encoding="utf-8"))
    assert rep["passed"] is False and rep["identical"] < 4
    assert all(q["prompt_ids_match"] for q in rep["questions"])  # the tokenizer was fine: weights are to blame


@needs_llama
def test_wrong_modelfile_template_fails_the_gate(tiny, tmp_path, monkeypatch):
    real = export.ollama_modelfile

    def old_style(tokenizer, gguf_name, system=None):
        text = real(tokenizer, gguf_name, system)
        start = text.index('TEMPLATE """') + len('TEMPLATE """')
        return text[:start] + OLD_TEMPLATE + text[text.index('"""', start):]

    monkeypatch.setattr(export, "ollama_modelfile", old_style)
    result = export.export_gguf(tiny["adapter"], tmp_path / "t.gguf", "f16")
    rep = result.fidelity
    assert rep["passed"] is False
    assert any("Modelfile TEMPLATE renders question 1 differently" in p for p in rep["problems"])
    assert all(q["modelfile_prompt_match"] is False for q in rep["questions"])
    assert rep["identical"] >= 4  # the weights are fine: only the Modelfile is wrong


@needs_llama
def test_missing_stop_and_wrong_eos_are_problems(tiny, tmp_path):
    from lorastudio.export_check import check_gguf, check_questions, reference_greedy

    result = export.export_gguf(tiny["adapter"], tmp_path / "ok.gguf", "f16", check=False)
    mf = Path(result.modelfile)
    mf.write_text(mf.read_text().replace('PARAMETER stop "<|im_end|>"\n', "").replace("temperature 0",
                                                                                    "temperature 0.8"))
    questions, _ = check_questions(tiny["adapter"], 2)
    peft_model, tok, _ = export.load_peft(tiny["adapter"])
    ref = reference_greedy(peft_model, tok, questions, None, tokens=4)
    rep = check_gguf(result.path, "f16", ref, tok, modelfile=mf, tokens=4)
    assert rep["passed"] is False
    assert any("no PARAMETER stop '<|im_end|>'" in p for p in rep["problems"])
    assert any("temperature 0.8" in p for p in rep["problems"])
    tok.eos_token = "<|endoftext|>"  # a tokenizer whose end of answer is not the GGUF's
    rep = check_gguf(result.path, "f16", ref, tok, tokens=4)
    assert any("end-of-sequence token" in p for p in rep["problems"])


@needs_llama
@pytest.mark.parametrize("gguf_type, required", [("q8_0", 3), ("q4_K_M", 3)])
def test_quantized_exports_report_agreement_with_their_threshold(tiny, tmp_path, gguf_type, required, capsys):
    out = tmp_path / f"tiny-{gguf_type}.gguf"
    code = main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--gguf-type", gguf_type,
                 "--no-verify", "--check-count", "5", "--check-tokens", "8"])
    captured = capsys.readouterr()
    rep = json.loads(out.with_name(f"tiny-{gguf_type}.fidelity.json").read_text(encoding="utf-8"))
    assert rep["type"] == gguf_type and rep["required"] == required and rep["tokens"] == 8
    assert rep["identical"] == sum(q["identical"] for q in rep["questions"])
    first = sum(q["common_prefix"] > 0 for q in rep["questions"])
    assert rep["first_token_agreement"] == first
    agreeing = rep["identical"] if gguf_type == "q8_0" else first
    assert rep["criterion"] == ("identical" if gguf_type == "q8_0" else "first_token")
    assert rep["passed"] == (agreeing >= required)  # the tokenizer and Modelfile are right here
    assert code == (0 if rep["passed"] else 1)
    verdict = "fidelity PASSED" if rep["passed"] else "FAILED fidelity"
    assert verdict in captured.out + captured.err
    assert f"{rep['identical']}/5 identical" in captured.out + captured.err
    from lorastudio.llamacpp import gguf_metadata

    file_type = gguf_metadata(out, ["general.file_type"])["general.file_type"]
    assert file_type == {"q8_0": 7, "q4_K_M": 15}[gguf_type]


@needs_llama
def test_cli_json_carries_the_report_and_skips_the_transformers_round_trip(tiny, tmp_path, capsys):
    out = tmp_path / "j.gguf"
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fidelity"]["passed"] is True and data["fidelity_file"] == str(out.with_name("j.fidelity.json"))
    assert data["check"] is None  # the llama.cpp gate replaces the transformers round trip for GGUF


def test_no_check_and_bad_check_options(tiny, tmp_path, capsys):
    out = tmp_path / "n.gguf"
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--no-check", "--no-verify"]) == 0
    captured = capsys.readouterr()
    assert "fidelity" not in captured.out + captured.err and not out.with_name("n.fidelity.json").exists()
    assert main(["export", "--adapter", str(tiny["adapter"]), "--merged", str(tmp_path / "m"), "--no-check"]) == 2
    assert "apply to --gguf" in capsys.readouterr().err
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--check-tokens", "0"]) == 2
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out),
                 "--check-questions", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "none.jsonl' does not exist" in err and "Traceback" not in err


def test_without_llamacpp_the_export_says_it_was_not_checked(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    out = tmp_path / "u.gguf"
    assert main(["export", "--adapter", str(tiny["adapter"]), "--gguf", str(out), "--no-verify"]) == 0
    assert "fidelity NOT CHECKED: llama-cpp-python is not installed" in capsys.readouterr().err
    rep = json.loads(out.with_name("u.fidelity.json").read_text(encoding="utf-8"))
    assert rep["passed"] is None and "not installed" in rep["skipped"]


def test_summary_in_chinese(tiny):
    rep = {"type": "q8_0", "tokens": 16, "questions_source": "x", "identical": 2, "total": 5, "required": 3,
           "criterion": "identical", "first_token_agreement": 4,
           "mean_common_prefix": 9.4, "passed": False, "problems": ["only 2 of 5"],
           "questions": [{"identical": False, "common_prefix": 3, "prompt_ids_match": True,
                          "modelfile_prompt_match": True, "question": "问"}]}
    lines = export_check.summary_lines(rep, "zh")
    assert any(line.startswith("FAILED fidelity（保真检查未通过）") for line in lines)
    assert any("前 3 个 token 后不同" in line for line in lines) and any("怎么办" in line for line in lines)
