"""Engine and sessions.

SQLite is opened in WAL mode with a busy timeout and foreign keys on, so the
app, `ace worker` and the HTTP service can share one file. Writers take the
write lock up front (`BEGIN IMMEDIATE`) so two writers never interleave a
read-modify-write on the same playbook; readers never block.
"""

import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from typing import Any

from sqlalchemy import Connection, event, insert
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

from core.config import get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# Threads of one process queue here for the write lock instead of inside
# SQLite, whose busy handler sleeps in growing steps (up to 100 ms) while it
# waits. Other processes still meet busy_timeout.
_write_locks: dict[str, threading.RLock] = {}
BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process; migrations are applied on first use."""
    url = url or get_settings().db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            kwargs: dict[str, object] = {}
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
            engine = create_engine(url, **kwargs)
            if is_sqlite(engine):
                _install_sqlite_hooks(engine)
            upgrade(engine)
            _engines[url] = engine
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    bound = engine.execution_options(immediate=True) if is_sqlite(engine) else engine
    with bound.begin() as conn:  # one process migrates at a time
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    with Session(get_engine(url), expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """A transaction that holds the write lock from its first statement.

    Commits on success, rolls back on any exception: callers never see a
    half-applied change.
    """
    engine = get_engine(url)
    if is_sqlite(engine):
        with _lock:
            lock: AbstractContextManager[object] = _write_locks.setdefault(str(engine.url), threading.RLock())
        bound = engine.execution_options(immediate=True)
    else:
        lock, bound = nullcontext(), engine
    with lock, Session(bound, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def insert_rows(conn: Connection, rows: Iterable[SQLModel]) -> None:
    """Insert new table rows with Core statements (no identity map): for hot append-only paths."""
    by_table: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        table = type(row).__table__  # type: ignore[attr-defined]
        values = {c.name: getattr(row, c.name) for c in table.columns}
        for c in table.primary_key.columns:
            if values.get(c.name) is None:
                values.pop(c.name, None)
        by_table.setdefault(table, []).append(values)
    for table, values in by_table.items():
        conn.execute(insert(table), values)
