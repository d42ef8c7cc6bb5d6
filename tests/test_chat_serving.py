"""`/v1/chat/completions` over real HTTP (uvicorn on loopback, the official `openai` SDK and httpx)
with real engines on a tiny model: streamed answers token by token from llama.cpp and from
transformers, generation that stops when its client is gone, and a bounded request line with 429s.

The tiny Qwen2 (tests/inference_fixtures.py) is written as an f16 GGUF for llama.cpp; the
transformers engine loads the same weights. The app is `create_app` with an engine factory (the
catalog id `tiny-random` → the tiny engine), served by a real uvicorn server in a thread.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).parent))
from inference_fixtures import build_tiny_model  # noqa: E402

from lorastudio import llamacpp  # noqa: E402

QUESTION = "工单超过多久会升级？"
needs_llama = pytest.mark.skipif(not llamacpp.available(),
                                 reason="llama-cpp-python is not installed (pip install 'lorastudio[llamacpp]')")


@pytest.fixture(scope="module", autouse=True)
def one_llama_thread():
    mp = pytest.MonkeyPatch()
    mp.setenv("LORASTUDIO_LLAMACPP_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorastudio.export import write_gguf

    root = tmp_path_factory.mktemp("chat_serving")
    base = build_tiny_model(root / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():  # round to f16 so both engines compute with the same weights
        for p in model.parameters():
            p.copy_(p.half().float())
    model.save_pretrained(base)
    gguf = root / "tiny.gguf"
    write_gguf(model, AutoTokenizer.from_pretrained(base), gguf, "f16", name="tiny")
    return {"root": root, "base": base, "gguf": gguf}


def _engine(tiny, kind: str):
    """One llama.cpp thread: torch (loaded first here) leaves libgomp spinning, and two spinning
    threads on a loaded 2-core CPU make even the tiny model take seconds per answer (docs/ENGINE.md)."""
    from lorastudio.inference import ChatEngine

    if kind == "llama.cpp":
        from transformers import AutoTokenizer

        return ChatEngine(str(tiny["gguf"]), engine="llama.cpp", tokenizer=AutoTokenizer.from_pretrained(tiny["base"]))
    return ChatEngine(str(tiny["base"]), engine="transformers")


def _slow(engine, per_token_s: float):
    """The engine's model made slow and endless: every token takes `per_token_s` and no token stops
    it, so an answer runs to max_tokens (the context's end). Stands in for a big model on a CPU."""
    backend = engine.backend
    if backend.name == "llama.cpp":
        real = backend.llama.generate

        def generate(*args, **kw):
            kw["stop_ids"] = ()
            for token in real(*args, **kw):
                time.sleep(per_token_s)
                yield token

        backend.llama.generate = generate
    else:
        raise NotImplementedError
    return engine


class LiveServer:
    """The studio app on a real uvicorn server (its own thread, a free loopback port)."""

    def __init__(self, tmp_path: Path, factory, **settings) -> None:
        from lorastudio.serve.app import create_app
        from lorastudio.serve.settings import Settings

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = self.app = create_app(Settings(data_dir=tmp_path / "data", start_worker=False, engine_factory=factory,
                                             **settings))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def chat(self, text: str = QUESTION, max_tokens: int = 4, timeout: float = 60, **extra) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", timeout=timeout, json={
            "model": "tiny-random", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra})

    def line(self) -> tuple[int, int]:
        """(running, waiting) in the tiny model's chat line (the line exists after the first chat request)."""
        queue = getattr(self.app.state, "chat_queue", None)
        return queue.state("tiny-random") if queue is not None else (0, 0)

    def wait_line(self, ok, what: str, timeout: float = 30) -> None:
        """Until `ok(running, waiting)`: what a fixed sleep would assume, however loaded the machine."""
        deadline = time.monotonic() + timeout
        while not ok(*self.line()):
            assert time.monotonic() < deadline, f"the chat line (running, waiting) is {self.line()}, not {what}"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(tmp_path):
    servers: list[LiveServer] = []

    def start(factory, **settings) -> LiveServer:
        servers.append(LiveServer(tmp_path / f"s{len(servers)}", factory, **settings))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------------------------
# streaming (issue 14)


@pytest.mark.parametrize("kind", [pytest.param("llama.cpp", marks=needs_llama), "transformers"])
def test_sdk_stream_is_token_by_token_and_joins_to_the_plain_answer(tiny, serve, kind):
    engine = _engine(tiny, kind)
    assert engine.engine == kind
    server = serve(lambda base: engine)
    client = server.client()
    messages = [{"role": "user", "content": QUESTION}]
    for max_tokens in (40, 3):
        plain = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=max_tokens,
                                               temperature=0)
        chunks = list(client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=max_tokens,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(deltas) == plain.choices[0].message.content  # greedy: the same answer
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [plain.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        # Token by token: one delta per generated token, except where a character spans two tokens.
        assert len(deltas) >= max(2, plain.usage.completion_tokens // 2), (len(deltas), plain.usage)
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-random", "max_tokens": 5, "stream": True, "messages": messages}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


# --------------------------------------------------------------------------------------------
# a gone client stops its generation (issue 16)


def _wait_for_short_request(server: LiveServer) -> float:
    t0 = time.monotonic()
    resp = server.chat(max_tokens=4)
    assert resp.status_code == 200, resp.text
    return time.monotonic() - t0


@needs_llama
def test_a_gone_client_stops_its_generation_plain_and_streamed(tiny, serve):
    """Before: a plain request whose client left kept generating to max_tokens and the next request
    waited for all of it (48 s on the default model). Here an abandoned request would
    hold it ~14 s more."""
    engine = _slow(_engine(tiny, "llama.cpp"), per_token_s=0.03)
    server = serve(lambda base: engine)
    _wait_for_short_request(server)  # loads the engine
    baseline = _wait_for_short_request(server)
    # Plain (non-streamed): the client gives up after 1 s and closes its connection.
    with pytest.raises(httpx.ReadTimeout):
        server.chat(max_tokens=4096, timeout=1.0)
    after_plain = _wait_for_short_request(server)
    # Streamed: read a few chunks, then close the connection.
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-random", "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": QUESTION}]}) as resp:
        seen = 0
        for line in resp.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 5:
                break
    after_stream = _wait_for_short_request(server)
    # A short request costs ~0.2 s (up to ~1.5 s on a loaded 2-core CPU); an abandoned answer would
    # have held the engine for its remaining ~470 tokens × 30 ms ≈ 14 s.
    assert after_plain < baseline + 5.0, (baseline, after_plain)
    assert after_stream < baseline + 5.0, (baseline, after_stream)
    print(f"\nshort request: alone {baseline:.2f} s, after a gone plain client {after_plain:.2f} s, "
          f"after a gone stream {after_stream:.2f} s")


# --------------------------------------------------------------------------------------------
# a bounded line and 429s (issue 16)


@needs_llama
def test_flood_beyond_the_line_gets_429s_never_5xx_or_dropped_connections(tiny, serve):
    engine = _slow(_engine(tiny, "llama.cpp"), per_token_s=0.02)
    server = serve(lambda base: engine, chat_queue=2)
    assert server.chat(max_tokens=2).status_code == 200  # the engine is loaded
    results: list[httpx.Response | Exception] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            resp = server.chat(text=f"{QUESTION} {i}", max_tokens=25, timeout=120, stream=i % 3 == 0)
        except Exception as exc:  # a dropped connection, a timeout
            resp = exc
        with lock:
            results.append(resp)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, Exception)], results
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 3 and codes.count(429) >= 1, codes  # 1 running + 2 waiting at least
    for r in results:
        if r.status_code == 429:
            err = r.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
            assert "LORASTUDIO_CHAT_QUEUE" in err["message"]
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.text.rstrip().endswith("[DONE]") if "event-stream" in r.headers["content-type"] else \
                r.json()["choices"][0]["message"]["content"]
    # The SDK sees a typed RateLimitError while the line is full, and the server serves again after.
    # The line full: one generating (long enough for the others and the SDK's request to arrive), two waiting.
    sdk = server.client()
    hold = [threading.Thread(target=lambda n=n: server.chat(max_tokens=n, timeout=120)) for n in (100, 40, 40)]
    hold[0].start()
    server.wait_line(lambda r, w: r == 1, "one generating")
    for t in hold[1:]:
        t.start()
    server.wait_line(lambda r, w: w == 2, "two waiting")
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="tiny-random", max_tokens=2, messages=[{"role": "user", "content": QUESTION}])
    assert info.value.code == "rate_limit_exceeded"
    for t in hold:
        t.join()
    assert server.chat(max_tokens=2).status_code == 200


@needs_llama
def test_a_client_that_leaves_the_line_frees_its_place(tiny, serve):
    engine = _slow(_engine(tiny, "llama.cpp"), per_token_s=0.02)
    server = serve(lambda base: engine, chat_queue=1)
    assert server.chat(max_tokens=2).status_code == 200
    # ≥ 5 s of generation: it still runs when the place is freed, so only the leaving client can have freed it.
    running = threading.Thread(target=lambda: server.chat(max_tokens=250, timeout=120))
    running.start()
    server.wait_line(lambda r, w: r == 1, "one generating")
    with pytest.raises(httpx.ReadTimeout):  # waits in the line's one place, then gives up
        server.chat(max_tokens=2, timeout=0.5)
    server.wait_line(lambda r, w: w == 0, "the place freed by the client that left", timeout=3)
    assert running.is_alive() and server.line() == (1, 0)
    resp = server.chat(max_tokens=2, timeout=120)  # the place is free again: served, not 429
    assert resp.status_code == 200, resp.text
    running.join()


def test_chat_queue_limit_is_a_setting(tmp_path, monkeypatch):
    from lorastudio.serve.settings import Settings, SettingsError

    monkeypatch.setenv("LORASTUDIO_CHAT_QUEUE", "3")
    assert Settings.from_env(data_dir=tmp_path).chat_queue == 3
    assert Settings.from_env(data_dir=tmp_path, chat_queue=0).chat_queue == 0
    with pytest.raises(SettingsError, match="chat queue"):
        Settings(data_dir=tmp_path, chat_queue=-1)
