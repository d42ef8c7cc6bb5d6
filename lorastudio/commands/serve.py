"""`lorastudio serve`: the web studio at /, the OpenAI-compatible API under /v1."""

from __future__ import annotations

import argparse
import sys

HELP = "Start the studio: web UI at /, OpenAI-compatible API under /v1, training queue."
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; anything else "
                        "needs --api-key)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8000)")
    parser.add_argument("--data-dir", default=None, help="where files, jobs and the database live (default "
                        "$LORASTUDIO_DATA_DIR or ~/.local/share/lorastudio)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 and /studio "
                        "(or set LORASTUDIO_API_KEY, which keeps the key out of the process list)")
    parser.add_argument("--max-upload-mb", type=int, default=None, help="largest accepted upload (default 512)")
    parser.add_argument("--chat-queue", type=int, default=None, help="chat requests that may wait per model while "
                        "one generates; more are answered 429 with Retry-After (default 8, LORASTUDIO_CHAT_QUEUE)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from lorastudio.serve.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(
            host=args.host, port=args.port, data_dir=args.data_dir, api_key=args.api_key,
            max_upload_bytes=args.max_upload_mb * 1024 * 1024 if args.max_upload_mb else None,
            chat_queue=args.chat_queue,
        )
        settings.check_bind()
    except SettingsError as exc:
        print(f"lorastudio serve: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from lorastudio.serve.app import create_app
    except ImportError as exc:
        print(f"lorastudio serve: the server needs the 'serve' extra ({exc.name} is missing): "
              "pip install 'lorastudio[serve]'", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lorastudio.serve.app import lock_data_dir

    try:
        # Fail with one clear line now rather than a traceback from inside uvicorn's start-up.
        probe = lock_data_dir(settings.data_dir)
    except SettingsError as exc:
        print(f"lorastudio serve: {exc}", file=sys.stderr)
        return 2
    probe.close()
    from lorastudio import llamacpp
    from lorastudio.serve.store import StoreDamaged

    # Before anything imports torch: llama.cpp's threads then wait with a short spin (docs/ENGINE.md).
    llamacpp.preload()

    try:
        app = create_app(settings)
    except StoreDamaged as exc:
        print(f"lorastudio serve: {exc}", file=sys.stderr)
        return 2
    auth = "API key required" if settings.api_key else "no API key (loopback only)"
    print(f"LoRA Studio on http://{settings.host}:{settings.port}/  (API: /v1, docs: /docs, {auth}, "
          f"data: {settings.data_dir})", file=sys.stderr, flush=True)
    try:
        # A bounded graceful shutdown: open SSE streams must not keep Ctrl-C waiting forever.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                    timeout_graceful_shutdown=5)
    except OSError as exc:
        print(f"lorastudio serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
