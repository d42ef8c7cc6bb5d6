"""The studio's records behind a small repository interface (SQLite in WAL mode today).

Everything the API shows lives here: files, jobs, events, checkpoints and tuned models. Rows are
plain dicts so that a PostgreSQL implementation can replace `SQLiteStore` without touching routes
or the worker. JSON columns are decoded on the way out.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    hyperparameters TEXT NOT NULL,
    status TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    error TEXT,
    seed INTEGER,
    estimated_finish INTEGER,
    metadata TEXT,
    job_dir TEXT NOT NULL,
    pid INTEGER,
    events_offset INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT,
    raw TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step_number INTEGER NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL,
    UNIQUE(job_id, step_number)
);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    base TEXT NOT NULL,
    adapter_dir TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""

_JSON_COLUMNS = {"hyperparameters", "error", "metadata", "data", "raw", "metrics"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class StoreDamaged(RuntimeError):
    """The database cannot be used as it is; the message says which file and what to do."""


class UnknownCursor(KeyError):
    """A list's `after` names no item of that list."""


class Store(Protocol):
    """What routes and the worker need from a store; see SQLiteStore for the semantics."""

    def add_file(self, *, filename: str, nbytes: int, purpose: str, path: str, file_id: str) -> dict: ...
    def get_file(self, file_id: str) -> dict | None: ...
    def list_files(self, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 10000) -> tuple[list[dict], bool]: ...
    def delete_file(self, file_id: str) -> bool: ...
    def add_job(self, **values: Any) -> dict: ...
    def get_job(self, job_id: str) -> dict | None: ...
    def list_jobs(self, *, after: str | None = None, limit: int = 20, status: str | None = None) -> list[dict]: ...
    def jobs_with_status(self, *statuses: str) -> list[dict]: ...
    def update_job(self, job_id: str, *, only_if_status: tuple[str, ...] | None = None, **values: Any) -> bool: ...
    def delete_job(self, job_id: str) -> bool: ...
    def add_event(self, job_id: str, *, level: str, type: str, message: str, data: dict | None,
                  raw: dict, job_updates: dict | None = None) -> dict: ...
    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]: ...
    def events_since(self, job_id: str, seq: int) -> list[dict]: ...
    def add_checkpoint(self, **values: Any) -> dict | None: ...
    def keep_checkpoints(self, job_id: str, steps: set[int]) -> int: ...
    def list_checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> tuple[list[dict], bool]: ...
    def add_model(self, *, model_id: str, job_id: str, base: str, adapter_dir: str) -> None: ...
    def get_model(self, model_id: str) -> dict | None: ...
    def list_models(self) -> list[dict]: ...
    def get_checkpoint_by_model(self, name: str) -> dict | None: ...
    def close(self) -> None: ...


class SQLiteStore:
    """One connection shared by the server's threads, serialised by a lock.

    WAL mode lets readers (the web UI polling) proceed while the worker writes, and a SIGKILL
    never leaves a half-written row: every write is one transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._refuse_a_lost_database()
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            with self._lock:
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreDamaged(
                f"{self.path} is damaged ({exc}). It is never replaced automatically: restore it from a backup, "
                f"or move it aside (e.g. `mv {self.path} {self.path}.damaged`) to start with an empty list of "
                "files and jobs; the files under files/ and jobs/ stay where they are.") from None

    def _refuse_a_lost_database(self) -> None:
        """A 0-byte (or missing) database beside files/ and jobs/ full of data means the list of them was
        lost: starting empty would hide every file and job."""
        if self.path.exists() and self.path.stat().st_size > 0:
            return
        root = self.path.parent
        kept = [name for name in ("files", "jobs") if (root / name).is_dir() and any((root / name).iterdir())]
        if kept and self.path.exists():
            raise StoreDamaged(
                f"{self.path} is empty, but {' and '.join(f'{name}/' for name in kept)} in {root} hold data: the "
                "database that lists them was lost or truncated. Restore it from a backup; to start afresh instead, "
                f"move {root} aside. Nothing was changed.")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict | None:
        if row is None:
            return None
        out = dict(row)
        for key in _JSON_COLUMNS & out.keys():
            if out[key] is not None:
                out[key] = json.loads(out[key])
        return out

    def _one(self, sql: str, args: tuple = ()) -> dict | None:
        with self._lock:
            return self._row(self._db.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [self._row(r) for r in self._db.execute(sql, args).fetchall()]  # type: ignore[misc]

    def _insert(self, table: str, values: dict[str, Any]) -> None:
        cols = list(values)
        encoded = [json.dumps(values[c], ensure_ascii=False) if c in _JSON_COLUMNS and values[c] is not None
                   else values[c] for c in cols]
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        self._db.execute(sql, encoded)

    def _page(self, table: str, where: str, args: tuple, after: str | None, limit: int,
              newest_first: bool = True) -> tuple[list[dict], bool]:
        """Keyset paging on the autoincrement `seq`: `after` is the id of the last item already seen."""
        if after is not None:
            anchor = self._one(f"SELECT seq FROM {table} WHERE id = ? AND {where}", (after, *args))
            if anchor is None:  # never silently page 1: the client would loop or miss items
                raise UnknownCursor(after)
            where += " AND seq < ?" if newest_first else " AND seq > ?"
            args = (*args, anchor["seq"])
        order = "DESC" if newest_first else "ASC"
        rows = self._all(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {order} LIMIT ?", (*args, limit + 1))
        return rows[:limit], len(rows) > limit

    # --- files ---------------------------------------------------------------------------------
    def add_file(self, *, filename: str, nbytes: int, purpose: str, path: str, file_id: str) -> dict:
        with self._lock:
            self._insert("files", {"id": file_id, "filename": filename, "bytes": nbytes, "created_at": now(),
                                   "purpose": purpose, "status": "processed", "path": path})
        return self.get_file(file_id)  # type: ignore[return-value]

    def get_file(self, file_id: str) -> dict | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def list_files(self, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 10000) -> tuple[list[dict], bool]:
        where, args = ("purpose = ?", (purpose,)) if purpose else ("1 = 1", ())
        return self._page("files", where, args, after, limit)

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0

    # --- jobs ----------------------------------------------------------------------------------
    def add_job(self, **values: Any) -> dict:
        values.setdefault("created_at", now())
        with self._lock:
            self._insert("jobs", values)
        return self.get_job(values["id"])  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list_jobs(self, *, after: str | None = None, limit: int = 20, status: str | None = None) -> list[dict]:
        where, args = ("status = ?", (status,)) if status else ("1 = 1", ())
        return self._page("jobs", where, args, after, limit)[0]

    def jobs_with_status(self, *statuses: str) -> list[dict]:
        marks = ", ".join("?" for _ in statuses)
        return self._all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq ASC", statuses)

    def delete_job(self, job_id: str) -> bool:
        """Forget a job with its events, checkpoints and tuned model (one transaction); its files are the
        caller's to remove."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("events", "checkpoints", "models"):
                    self._db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
                gone = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return gone

    def update_job(self, job_id: str, *, only_if_status: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Update fields; with `only_if_status`, atomically only when the job is in one of them."""
        with self._lock:
            return self._update_job_locked(job_id, only_if_status, values)

    def _update_job_locked(self, job_id: str, only_if_status: tuple[str, ...] | None, values: dict) -> bool:
        if not values:
            return True
        sets = ", ".join(f"{k} = ?" for k in values)
        args: list[Any] = [json.dumps(v, ensure_ascii=False) if k in _JSON_COLUMNS and v is not None else v
                           for k, v in values.items()]
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        args.append(job_id)
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' for _ in only_if_status)})"
            args.extend(only_if_status)
        return self._db.execute(sql, args).rowcount > 0

    # --- events --------------------------------------------------------------------------------
    def add_event(self, job_id: str, *, level: str, type: str, message: str, data: dict | None,
                  raw: dict, job_updates: dict | None = None) -> dict:
        """Insert an event and (same transaction) update the job, e.g. the events.jsonl offset.

        One transaction means a crash can never record an event twice or skip one on restart.
        """
        event_id = new_id("ftevent")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._insert("events", {"id": event_id, "job_id": job_id, "created_at": int(raw.get("time") or now()),
                                        "level": level, "type": type, "message": message, "data": data,
                                        "raw": raw})
                if job_updates:
                    self._update_job_locked(job_id, None, job_updates)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self._one("SELECT * FROM events WHERE id = ?", (event_id,))  # type: ignore[return-value]

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        return self._page("events", "job_id = ?", (job_id,), after, limit)

    def events_since(self, job_id: str, seq: int) -> list[dict]:
        return self._all("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq ASC", (job_id, seq))

    # --- checkpoints ---------------------------------------------------------------------------
    def add_checkpoint(self, **values: Any) -> dict | None:
        """Record a checkpoint once per (job, step): a resumed trainer may announce it again."""
        values.setdefault("created_at", now())
        values.setdefault("id", new_id("ftckpt"))
        with self._lock:
            try:
                self._insert("checkpoints", values)
            except sqlite3.IntegrityError:
                return None
        return self._one("SELECT * FROM checkpoints WHERE id = ?", (values["id"],))

    def keep_checkpoints(self, job_id: str, steps: set[int]) -> int:
        """Forget the job's checkpoints whose step is not in `steps` (the trainer pruned them from disk);
        returns how many were forgotten."""
        with self._lock:
            rows = self._db.execute("SELECT id, step_number FROM checkpoints WHERE job_id = ?", (job_id,)).fetchall()
            gone = [row[0] for row in rows if row[1] not in steps]
            self._db.executemany("DELETE FROM checkpoints WHERE id = ?", [(g,) for g in gone])
        return len(gone)

    def list_checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> tuple[list[dict], bool]:
        return self._page("checkpoints", "job_id = ?", (job_id,), after, limit)

    def get_checkpoint_by_model(self, name: str) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE fine_tuned_model_checkpoint = ?", (name,))

    # --- tuned models --------------------------------------------------------------------------
    def add_model(self, *, model_id: str, job_id: str, base: str, adapter_dir: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO models (id, job_id, base, adapter_dir, created_at) "
                             "VALUES (?, ?, ?, ?, ?)", (model_id, job_id, base, adapter_dir, now()))

    def get_model(self, model_id: str) -> dict | None:
        return self._one("SELECT * FROM models WHERE id = ?", (model_id,))

    def list_models(self) -> list[dict]:
        return self._all("SELECT * FROM models ORDER BY created_at ASC")
