"""The studio's view of jobs and bases (routes in api_studio.py): one summary per job for the job list
(duration, final loss, rows, settings), deleting a finished job, the two downloads a job offers — the
adapter alone (as PEFT saves it, with a model card naming the base and the chat template; no training
data, no event log, no server path) and the training report (augmented rows, events, data report,
config). Which bases can run on this server: `lorastudio.models.availability`.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from lorastudio.serve.objects import job_object
from lorastudio.serve.store import TERMINAL_STATUSES
from lorastudio.serve.studio_forgetting import summary as forgetting_summary

# The files of the training report (beside the attempts' event logs, events.attempt-N.jsonl).
REPORT_FILES = ("events.jsonl", "augmented.jsonl", "knowledge.jsonl", "data_report.json", "train_config.yaml")
# TrainConfig fields that name paths on the server: left out of the adapter's copy of the settings.
_PATH_FIELDS = ("data", "validation_data", "output_dir", "extra")


# --- summaries -----------------------------------------------------------------------------------
def _rows(job_dir: Path) -> int | None:
    try:
        report = json.loads((job_dir / "data_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = report.get("rows_ok") if isinstance(report, dict) else None
    return rows if isinstance(rows, int) else None


def _from_events(store: Any, job_id: str) -> dict[str, Any]:
    """The last training loss and step, and the rows trained on, from the job's events."""
    out: dict[str, Any] = {"final_loss": None, "steps": None, "total_steps": None, "valid_loss": None}
    for row in store.events_since(job_id, 0):
        raw = row["raw"]
        if raw.get("type") == "metrics":
            out["final_loss"] = raw.get("loss")
            out["steps"] = raw.get("step")
            out["total_steps"] = raw.get("total_steps")
        elif raw.get("type") == "eval":
            out["valid_loss"] = raw.get("valid_loss")
    return out


def job_summary(store: Any, job: dict, cache: dict[str, dict]) -> dict[str, Any]:
    """The job object plus `studio`: duration, final loss, steps, rows (a finished job's are cached), and
    the forgetting check's summary once it was run."""
    extra = cache.get(job["id"])
    if extra is None:
        extra = _from_events(store, job["id"])
        extra["rows"] = _rows(Path(job["job_dir"]))
        finished = job.get("finished_at")
        extra["duration_s"] = finished - job["created_at"] if finished else None
        if job["status"] in TERMINAL_STATUSES:
            cache[job["id"]] = extra
    checked = forgetting_summary(job)  # the forgetting check comes after the job: never cached here
    return {**job_object(job), "studio": {**extra, "forgetting": checked} if checked else extra}


# --- deleting ------------------------------------------------------------------------------------
def remove_job_dir(job: dict, jobs_dir: Path) -> None:
    """Remove a job's directory, only when it lies inside the server's jobs directory."""
    path = Path(job["job_dir"]).resolve()
    root = jobs_dir.resolve()
    if path != root and root in path.parents and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


# --- downloads -----------------------------------------------------------------------------------
def _zip(entries: list[tuple[str, bytes | Path]], target: Path) -> Path:
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries:
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    tmp.replace(target)
    return target


def _base_label(job: dict) -> tuple[str, str | None]:
    """(the base id the job was made from, its hub id when it has one)."""
    from lorastudio.models import catalog

    entry = next((e for e in catalog() if e["id"] == job["model"]), None)
    hub = entry.get("hub_id") if entry else None
    if job["model"] == "default":  # the embedded default is this hub model, assembled offline
        hub = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    return job["model"], hub


def _template(job_dir: Path) -> tuple[str, str | None]:
    """(the chat template in words, its Jinja text) of the base the job trained with."""
    import yaml

    resolved = None
    try:
        cfg = yaml.safe_load((job_dir / "train_config.yaml").read_text(encoding="utf-8")) or {}
        resolved = (cfg.get("extra") or {}).get("resolved_base")
    except (OSError, ValueError, AttributeError):
        pass
    text = None
    if resolved:
        for name in ("chat_template.jinja",):
            path = Path(resolved) / name
            if path.is_file():
                text = path.read_text(encoding="utf-8")
        if text is None:
            try:
                tok = json.loads((Path(resolved) / "tokenizer_config.json").read_text(encoding="utf-8"))
                text = tok.get("chat_template") if isinstance(tok.get("chat_template"), str) else None
            except (OSError, ValueError):
                text = None
    if text and "<|im_start|>" in text:
        return "ChatML (`<|im_start|>role … <|im_end|>`), the base model's own chat template", text
    if text:
        return "the base model's own chat template (chat_template.jinja)", text
    return "the base model's own chat template", None


def _settings(job_dir: Path) -> dict[str, Any]:
    """The resolved training settings without the fields that name server paths."""
    import yaml

    try:
        cfg = yaml.safe_load((job_dir / "train_config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in cfg.items() if k not in _PATH_FIELDS} if isinstance(cfg, dict) else {}


def adapter_card(job: dict, base: str, hub: str | None, template: str, settings: dict[str, Any],
                 filename: str | None) -> str:
    """The model card of the downloaded adapter: what it is, its base and template, how to load it."""
    name = job.get("fine_tuned_model") or job["id"]
    load_base = hub or base
    system = settings.get("system_prompt")
    lines = [
        f"# {name}", "",
        "A LoRA adapter made with LoRA Studio, in the format PEFT saves "
        "(`adapter_config.json`, `adapter_model.safetensors`).", "",
        f"- Base model: `{base}`" + (f" (`{hub}` on the Hugging Face hub)" if hub and hub != base else ""),
        f"- Prompt format: {template}"
        + (f"; system prompt used in training: {json.dumps(system, ensure_ascii=False)}" if system else ""),
        f"- Task: {settings.get('task', '?')}; LoRA rank {settings.get('lora_r', '?')}, alpha "
        f"{settings.get('lora_alpha', '?')}; {settings.get('num_epochs', '?')} passes over the data",
        f"- Trained from: {filename}" if filename else "",
        "", "## Use", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"base = AutoModelForCausalLM.from_pretrained({load_base!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({load_base!r})",
        "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")",
        "```", "",
        "Ask it through `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`, as in training.",
        "With LoRA Studio: `lorastudio compare --base " + base + " --adapter path/to/this/folder`.", "",
        "The training data and the training log are not part of this download (see the training report).", "",
        *(["In LoRA Studio the tuned model also reads the training rows closest to each question (`knowledge.jsonl`, "
           "in the training report): put that file in this folder to answer the same way there; loaded as above, "
           "or exported to GGUF, the adapter answers from its weights alone.", ""]
          if settings.get("knowledge_rows") else []),
    ]
    return "\n".join(line for line in lines if line is not None)


def build_adapter_zip(job: dict, target: Path, filename: str | None = None) -> Path:
    """adapter_config.json (its base named by id, not by a server path), adapter_model.safetensors,
    README.md (the card), train_config.yaml (settings only) and chat_template.jinja when known."""
    import yaml

    job_dir = Path(job["job_dir"])
    base, hub = _base_label(job)
    config = json.loads((job_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub or base
    template, template_text = _template(job_dir)
    settings = _settings(job_dir)
    entries: list[tuple[str, bytes | Path]] = [
        ("adapter_config.json", json.dumps(config, indent=2, ensure_ascii=False).encode()),
        ("adapter_model.safetensors", job_dir / "adapter_model.safetensors"),
        ("README.md", adapter_card(job, base, hub, template, settings, filename).encode()),
    ]
    if settings:
        entries.append(("train_config.yaml", yaml.safe_dump(settings, allow_unicode=True, sort_keys=False).encode()))
    if template_text:
        entries.append(("chat_template.jinja", template_text.encode()))
    return _zip(entries, target)


def build_report_zip(job: dict, target: Path) -> Path:
    """The training report: every event (each attempt's), the augmented rows, the data report, the
    resolved config."""
    job_dir = Path(job["job_dir"])
    files = [job_dir / name for name in REPORT_FILES]
    files += sorted(job_dir.glob("events.attempt-*.jsonl"))
    return _zip([(p.name, p) for p in files if p.is_file()], target)
