"""Ollama Modelfiles: read one, and render its TEMPLATE for a conversation the way Ollama would.

```python
from lorastudio.modelfile import parse_modelfile, ollama_prompt
mf = parse_modelfile(Path("out/Modelfile").read_text())
ollama_prompt(mf, [{"role": "user", "content": "工单超过多久会升级？"}])   # the text Ollama tokenizes
```

The export fidelity check uses this to prove that a Modelfile written beside a GGUF gives Ollama the
same prompt the adapter was trained on. What Ollama does (server/routes.go ChatHandler and
template/template.go, read for this module):

- a chat request whose first message is not a system message gets the Modelfile's `SYSTEM` prepended
  as a system message;
- for a template that uses `.Messages`, `collate` merges consecutive messages of one role (joined by
  a blank line) and joins every system message's text into `.System`; the system messages *stay* in
  `.Messages` — so a template that prints `.System` and then ranges over every message prints the
  system prompt twice;
- the template is executed by Go's `text/template` (no escaping; `{{-`/`-}}` trim the whitespace
  next to them; `if` is false for an empty string or list).

The renderer covers the subset chat templates use: text, `{{ .Field }}` / `{{ $.Field }}`,
`{{ if X }}` (`else`, `else if`), `{{ range .Messages }}` with `.Role` / `.Content` inside, and the
trim markers. Anything else raises `ModelfileError` instead of rendering something different.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class ModelfileError(ValueError):
    """The Modelfile or its TEMPLATE cannot be read or uses template syntax this renderer lacks."""


@dataclass
class Modelfile:
    source: str  # FROM
    template: str | None = None
    system: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)  # (name, value) in file order

    def parameter(self, name: str) -> list[str]:
        return [v for k, v in self.parameters if k == name]


_DIRECTIVE = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE)\s+(.*)$', re.I | re.S)


def parse_modelfile(text: str) -> Modelfile:
    """FROM, TEMPLATE, SYSTEM and PARAMETER lines (triple-quoted values may span lines)."""
    out = Modelfile(source="")
    pos = 0
    lines_seen = 0
    while pos < len(text):
        end = text.find("\n", pos)
        line = text[pos:] if end < 0 else text[pos:end]
        lines_seen += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pos = len(text) if end < 0 else end + 1
            continue
        m = _DIRECTIVE.match(stripped)
        if not m:
            raise ModelfileError(f"Modelfile line {lines_seen}: unknown instruction {stripped[:40]!r}")
        name, rest = m.group(1).upper(), m.group(2)
        start_of_rest = pos + line.index(rest[:1]) if rest else pos + len(line)
        if rest.startswith('"""'):
            close = text.find('"""', start_of_rest + 3)
            if close < 0:
                raise ModelfileError(f"Modelfile line {lines_seen}: {name} opens \"\"\" but never closes it")
            value = text[start_of_rest + 3:close]
            lines_seen += value.count("\n")
            nl = text.find("\n", close)
            pos = len(text) if nl < 0 else nl + 1
        else:
            value = rest.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            pos = len(text) if end < 0 else end + 1
        if name == "FROM":
            out.source = value
        elif name == "TEMPLATE":
            out.template = value
        elif name == "SYSTEM":
            out.system = value
        elif name == "PARAMETER":
            key, _, val = value.partition(" ")
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            out.parameters.append((key, val))
    if not out.source:
        raise ModelfileError("the Modelfile has no FROM line")
    return out


# --------------------------------------------------------------------------------------------
# Ollama's message handling


def ollama_messages(messages: list[dict[str, str]], system: str | None) -> tuple[str, list[dict[str, str]]]:
    """(.System, .Messages) as Ollama's chat handler passes them to a `.Messages` template."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    systems = [m["content"] for m in msgs if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append(dict(m))
    return "\n\n".join(systems), collated


def ollama_prompt(modelfile: Modelfile, messages: list[dict[str, str]]) -> str:
    """The prompt text Ollama renders for a chat request with these messages."""
    if modelfile.template is None:
        raise ModelfileError("the Modelfile has no TEMPLATE; Ollama would send the text without chat markers")
    if ".Messages" not in modelfile.template:
        raise ModelfileError("the TEMPLATE does not use .Messages (a legacy .Prompt template); "
                             "this renderer covers .Messages templates only")
    system, msgs = ollama_messages(messages, modelfile.system)
    return render_go_template(modelfile.template, {"System": system, "Messages": msgs, "Response": "",
                                                   "Tools": []})


# --------------------------------------------------------------------------------------------
# a Go text/template subset

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_WS = " \t\r\n"


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with Go's trim markers applied to the neighbouring text."""
    parts: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(_WS)
        if m.group(1):
            text = text.rstrip(_WS)
        if text:
            parts.append(("text", text))
        body = m.group(2)
        if body.startswith("/*"):
            body = ""
        parts.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = template[pos:]
    if trim_next:
        text = text.lstrip(_WS)
    if text:
        parts.append(("text", text))
    if "{{" in "".join(t for k, t in parts if k == "text"):
        raise ModelfileError("TEMPLATE has an unclosed {{ action")
    return parts


def _parse(parts: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list[Any], int, str]:
    """Nodes until one of `stop` ("end", "else"); returns (nodes, index after it, the stop word)."""
    nodes: list[Any] = []
    while i < len(parts):
        kind, body = parts[i]
        i += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        if not body:
            continue  # a comment
        word = body.split(None, 1)[0]
        if word in ("end", "else") and word in stop:
            return nodes, i - 1, body
        if word == "if":
            node, i = _parse_if(parts, i, body[2:].strip())
            nodes.append(node)
        elif word == "range":
            inner, j, closing = _parse(parts, i, ("end",))
            if closing != "end":
                raise ModelfileError("TEMPLATE: range without end")
            nodes.append(("range", body[5:].strip(), inner))
            i = j + 1
        elif body.startswith((".", "$.")) and re.fullmatch(r"\$?(\.[A-Za-z_]\w*)+", body):
            nodes.append(("field", body))
        else:
            raise ModelfileError(f"TEMPLATE action {{{{ {body} }}}} is outside the subset this check renders")
    if stop:
        raise ModelfileError(f"TEMPLATE: missing {{{{ {stop[0]} }}}}")
    return nodes, i, ""


def _parse_if(parts: list[tuple[str, str]], i: int, cond: str) -> tuple[Any, int]:
    then, j, closing = _parse(parts, i, ("end", "else"))
    if closing == "end":
        return ("if", cond, then, []), j + 1
    rest = closing[4:].strip()
    if rest.startswith("if "):  # {{ else if X }}: an if nested in the else branch, sharing one end
        node, k = _parse_if(parts, j + 1, rest[3:].strip())
        return ("if", cond, then, [node]), k
    other, k, closing = _parse(parts, j + 1, ("end",))
    return ("if", cond, then, other), k + 1


def _lookup(path: str, dot: Any, root: dict[str, Any]) -> Any:
    value: Any = root if path.startswith("$") else dot
    for name in path.lstrip("$").strip(".").split("."):
        if isinstance(value, dict) and name in value:
            value = value[name]
        elif isinstance(value, dict) and name.lower() in value:  # message dicts use lower-case keys
            value = value[name.lower()]
        else:
            raise ModelfileError(f"TEMPLATE field {path} has no value here")
    return value


def _truth(value: Any) -> bool:
    return bool(value)


def _condition(cond: str, dot: Any, root: dict[str, Any]) -> bool:
    if re.fullmatch(r"\$?(\.[A-Za-z_]\w*)+", cond):
        return _truth(_lookup(cond, dot, root))
    m = re.fullmatch(r'eq\s+(\$?(?:\.[A-Za-z_]\w*)+)\s+"([^"]*)"', cond)
    if m:
        return _lookup(m.group(1), dot, root) == m.group(2)
    raise ModelfileError(f"TEMPLATE condition {cond!r} is outside the subset this check renders")


def _run(nodes: list[Any], dot: Any, root: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "field":
            value = _lookup(node[1], dot, root)
            out.append("" if value is None else str(value))
        elif kind == "if":
            _run(node[2] if _condition(node[1], dot, root) else node[3], dot, root, out)
        elif kind == "range":
            items = _lookup(node[1], dot, root)
            if not isinstance(items, list):
                raise ModelfileError(f"TEMPLATE range over {node[1]}, which is not a list")
            for item in items:
                _run(node[2], item, root, out)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Execute a chat TEMPLATE (the subset described in the module docstring) on `data`."""
    nodes, _, _ = _parse(_lex(template), 0, ())
    out: list[str] = []
    _run(nodes, data, data, out)
    return "".join(out)


__all__ = ["Modelfile", "ModelfileError", "ollama_messages", "ollama_prompt", "parse_modelfile",
           "render_go_template"]
