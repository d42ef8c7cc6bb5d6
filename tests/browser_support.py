"""Shared helpers of the browser tests: Debian's Chromium through Playwright, screenshots, and the
page checks every step runs (nothing untranslated, nothing wider than the screen).

Playwright never downloads a browser here; the tests drive /usr/bin/chromium (`make browser-deps`)
and skip with a clear reason when it is missing.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "lorastudio" / "web"
# Test artifacts (git-ignored); LORASTUDIO_SCREENSHOTS puts them elsewhere (e.g. a CI artifacts folder).
SCREENSHOTS = Path(os.environ.get("LORASTUDIO_SCREENSHOTS") or REPO / "screenshots")
CHROMIUM = os.environ.get("LORASTUDIO_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
LOCALES = {"en": "en-US", "zh": "zh-CN"}
EXPECT_TIMEOUT_MS = 20_000  # every `expect` of the browser tests, unless it names its own timeout

# Words that stay as they are in both languages: product, format and model names, units.
ALLOWED_LATIN = [
    "LoRA Studio", "LoRA", "Qwen2.5-Coder-0.5B-Instruct", "tiny-random", "Hugging Face", "llama.cpp", "Ollama",
    "GGUF", "Excel", "JSONL", "JSON", "CSV", "TSV", "TXT", "xlsx", "jsonl", "json", "csv", "tsv", "txt", "zip",
    "token", "tokens", "alpha", "dropout", "epoch", "instruction", "response", "system", "user", "assistant",
    "UTF", "CPU", "GPU", "API", "bf16", "fp16", "fp32", "lorastudio serve", "English", "cores", "Python", "openai",
    "curl", "AVX-512", "AVX2", "AMX",  # CPU classes, as the recommender's messages name them
]


def require_chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it with `make browser-deps` "
                    "(apt-get install chromium) to run the browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed: pip install -e '.[dev]'")
    return CHROMIUM


def launch(playwright):
    return playwright.chromium.launch(executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS)


def chromium() -> Iterator[Any]:
    """Chromium for a test module: `@pytest.fixture(scope="module") def browser(): yield from chromium()`."""
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    # Playwright's 5 s per `expect` is short on a loaded 2-core machine, where the page and the service it
    # talks to answer several times slower than idle; an expect whose state never comes still fails.
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def open_page(browser, url: str, lang: str, viewport: dict | None = None,
              routes: dict[str, Callable] | None = None):
    """A fresh context (its own localStorage) in `lang` at `viewport`, `routes` answered by the test
    (Playwright route patterns → handlers), the page at `url` once the studio says it is ready.
    Returns (context, page, errors): the page's uncaught JavaScript errors are collected in `errors`."""
    context = browser.new_context(locale=LOCALES[lang], viewport=viewport or LAPTOP, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for pattern, handler in (routes or {}).items():
        page.route(pattern, handler)
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    return context, page, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def studio_server(tmp: Path, engine_factory: Callable[[str], Any], **env: str) -> Iterator[str]:
    """The real service with its web page, in this process (uvicorn on a thread, so tests can reach its
    engines), the fake trainer (`env`: FAKE_STEPS, FAKE_STEP_S, set while it runs) and `engine_factory`
    for chat. Yields its base URL."""
    require_chromium()
    import uvicorn

    from lorastudio.serve import create_app
    from tests.test_serve_api import make_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings = make_settings(tmp, engine_factory=engine_factory, web_dir=None)
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(),
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.config.port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield base
    finally:
        srv.should_exit = True
        thread.join(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shot(page, name: str) -> Path:
    """Full-page screenshot into screenshots/ (gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def shot_sections(page, name: str, sections=("step-data", "step-settings", "step-train", "step-compare",
                                              "step-use")) -> list[Path]:
    """One screenshot per card: a phone-width full page is too tall to look at in one piece."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for section in sections:
        path = SCREENSHOTS / f"{name}--{section}.png"
        page.locator(f"#{section}").screenshot(path=str(path))
        paths.append(path)
    return paths


_UNTRANSLATED_JS = r"""
([lang, allowed, extra]) => {
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const n = walker.currentNode;
    const el = n.parentElement;
    if (!el || el.closest('[hidden], script, style, option, code, pre, .data, [translate="no"], #lang-toggle')) continue;
    if (el.closest('details:not([open])') && !el.closest('summary')) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;           // not rendered (closed <details>, …)
    let text = n.textContent.trim();
    if (!text) continue;
    for (const w of [...extra, ...allowed].sort((a, b) => b.length - a.length)) text = text.split(w).join(' ');
    if (lang === 'zh' ? /[A-Za-z]{3,}/.test(text) : /[\u3400-\u9fff]/.test(text)) bad.push(n.textContent.trim());
  }
  return bad;
}
"""


def untranslated(page, lang: str, extra: list[str] | None = None) -> list[str]:
    """Visible UI text in the wrong language (data such as file names, answers and ids excluded)."""
    return page.evaluate(_UNTRANSLATED_JS, [lang, ALLOWED_LATIN, extra or []])


_OVERFLOW_JS = r"""
() => {
  const doc = document.documentElement;
  const problems = [];
  if (doc.scrollWidth > doc.clientWidth + 1) problems.push(`page scrolls sideways: ${doc.scrollWidth} > ${doc.clientWidth}`);
  const vw = doc.clientWidth;
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('[hidden], .table-wrap, pre, .sr-only, .skip, svg')) continue;
    if (el.closest('details:not([open])') && !el.closest('summary')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right > vw + 1 || r.left < -1) problems.push(`${el.tagName.toLowerCase()}#${el.id || ''}.${el.className || ''} sticks out (${Math.round(r.left)}..${Math.round(r.right)} of ${vw})`);
  }
  return problems.slice(0, 10);
}
"""


def overflow(page) -> list[str]:
    """Elements wider than the viewport, or a page that scrolls sideways."""
    return page.evaluate(_OVERFLOW_JS)


_OVERLAP_JS = r"""
(selectors) => {
  // Pairs of interactive/visible blocks inside one card whose boxes cross each other.
  const boxes = [];
  for (const sel of selectors) for (const el of document.querySelectorAll(sel)) {
    if (el.closest('[hidden]') || (el.closest('details:not([open])') && !el.closest('summary'))) continue;
    const r = el.getBoundingClientRect();
    if (r.width && r.height) boxes.push([sel + (el.id ? '#' + el.id : ''), r, el]);
  }
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, ra, ea] = boxes[i], [b, rb, eb] = boxes[j];
    if (ea.contains(eb) || eb.contains(ea)) continue;
    const x = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
    const y = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
    if (x > 2 && y > 2) hits.push(`${a} overlaps ${b}`);
  }
  return hits.slice(0, 10);
}
"""

OVERLAP_SELECTORS = [".btn", "select", "input[type=text]", ".summary", ".stats > div", ".badge", "h2", "h3",
                     ".setting", ".estimate", "progress", ".answer", ".job-open"]


def overlaps(page) -> list[str]:
    return page.evaluate(_OVERLAP_JS, OVERLAP_SELECTORS)


def check_layout(page, extra: list[str] | None = None) -> None:
    """What every screenshot step asserts: right language, no sideways scroll, no overlapping blocks."""
    lang = "zh" if page.evaluate("document.documentElement.lang").startswith("zh") else "en"
    problems = {"untranslated": untranslated(page, lang, extra), "overflow": overflow(page),
                "overlaps": overlaps(page)}
    assert problems == {"untranslated": [], "overflow": [], "overlaps": []}, problems


# What must never reach a user's page: the server's paths, Python's tracebacks and exception names.
LEAKS = ("/tmp/", "/home/", "/root/", "/srv/", ".local/share", "site-packages", "Traceback", "Error:",
         "Exception", "File \"", "lorastudio-questions")


def leaks(page) -> list[str]:
    """Server paths or tracebacks anywhere in the page's visible text, data included."""
    text = page.locator("body").inner_text()
    return [bad for bad in LEAKS if bad in text]


_ATTRS_JS = r"""
([lang, allowed]) => {
  const bad = [];
  for (const el of document.querySelectorAll('[placeholder], [title], [aria-label], option, button, summary')) {
    if (el.closest('[hidden], .data, [translate="no"], #lang-toggle')) continue;
    if (el.tagName === 'OPTION' && (el.closest('[data-testid^=compare-model], #eval-model, #use-job, #base-model-select')))
      continue;  // model names and job ids: data
    const texts = ['placeholder', 'title', 'aria-label'].map((a) => el.getAttribute(a)).filter(Boolean);
    if (el.tagName === 'OPTION') texts.push(el.textContent);
    for (let text of texts) {
      const raw = text;
      text = text.replace(/\b(ft:|ftjob-|file-)[\w:.-]+/g, ' ');  // ids are data
      for (const w of [...allowed].sort((a, b) => b.length - a.length)) text = text.split(w).join(' ');
      if (lang === 'zh' ? /[A-Za-z]{3,}/.test(text) : /[\u3400-\u9fff]/.test(text)) bad.push(raw);
    }
  }
  return bad;
}
"""


def untranslated_attributes(page, lang: str, extra: list[str] | None = None) -> list[str]:
    """Placeholders, tooltips, screen-reader labels and fixed choices in the wrong language."""
    return page.evaluate(_ATTRS_JS, [lang, ALLOWED_LATIN + (extra or [])])


def i18n_keys(lang: str) -> dict:
    import json

    return json.loads((WEB / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def expect_forgetting_panel(panel, *, kept: int, lost: int, of: int, zh: bool, gained: int | None = None) -> None:
    """The job's forgetting panel says, as data and in the page's language, how many of the general
    questions the base model answered right the tuned model still answers right."""
    from playwright.sync_api import expect

    expect(panel).to_have_attribute("data-kept", str(kept))
    expect(panel).to_have_attribute("data-lost", str(lost))
    if gained is not None:
        expect(panel).to_have_attribute("data-gained", str(gained))
    expect(panel).to_contain_text(f"基础模型答对的 {of} 个常识问题中，微调后仍答对 {kept} 个" if zh
                                  else f"Kept {kept} of the {of} general questions the base model answers right")
