"""The studio service: OpenAI-compatible API, studio endpoints, SQLite store, job worker.

`create_app(settings)` builds the FastAPI app; `lorastudio serve` runs it with uvicorn.
The core packages never import this one (it needs FastAPI).
"""

from lorastudio.serve.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]


def __getattr__(name: str):
    # FastAPI is imported only when the app is actually built, so `Settings` stays cheap.
    if name == "create_app":
        from lorastudio.serve.app import create_app

        return create_app
    raise AttributeError(name)
