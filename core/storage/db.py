"""Engine and sessions, on SQLite (the default) or PostgreSQL (a team's shared database).

SQLite is opened in WAL mode with a busy timeout and foreign keys on, so the
app, `ace worker` and the HTTP service can share one file. Writers take the
write lock up front (`BEGIN IMMEDIATE`) so two writers never interleave a
read-modify-write on the same playbook; readers never block.

PostgreSQL runs at READ COMMITTED with many writers at once, so every
read-modify-write locks what it reads: `lock_playbook` (`SELECT ... FOR
UPDATE` on the playbook row) before a playbook changes, `FOR UPDATE SKIP
LOCKED` when a worker claims a job, an advisory lock around migrations.
On SQLite those clauses compile to nothing and `BEGIN IMMEDIATE` does the job,
so both databases run the same statements.
"""

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional, TypeVar

from sqlalchemy import Connection, Table, event, insert, text, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from core.config import get_settings
from core.errors import Missing
from core.redaction import scrub_params
from core.storage.postgres import engine_options, scrub_json_objects

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# Threads of one process queue here for the write lock instead of inside
# SQLite, whose busy handler sleeps in growing steps (up to 100 ms) while it
# waits. Other processes still meet busy_timeout.
_write_locks: dict[str, threading.RLock] = {}
BUSY_TIMEOUT_MS = 30_000


# Any constant both sides agree on: the key of the advisory lock that serialises migrations on PostgreSQL.
MIGRATION_LOCK_KEY = 0x0ACE_0001


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def database_url(url: str) -> URL:
    """The URL to connect with: `postgresql://` and `postgres://` use psycopg 3, the driver we ship."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown_url(url: str) -> str:
    """The database URL as it may be printed or logged: the password masked."""
    try:
        return database_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unreadable database URL)"


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _switch_to_wal(cur: Any) -> None:
    """WAL mode; on a new file, processes starting together may each try the switch, and SQLite answers
    one of them "database is locked" at once (no busy wait: it would deadlock). Try again, briefly."""
    for attempt in range(100):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05 + 0.01 * attempt)


def _is_read(statement: str) -> bool:
    return statement[:6].upper() in ("SELECT", "PRAGMA")


def _install_scrub_hook(engine: Engine) -> None:
    """Every statement's text parameters pass `core.redaction.scrub_for_storage` before they reach the
    database: no secret, NUL or lone surrogate is ever stored (JSON columns arrive here serialized, so
    their strings are covered too). Reads are left alone. The raw write path (`run_raw`) does the same."""

    postgres = engine.dialect.name == "postgresql"

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _scrub(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
               _executemany: bool) -> tuple[str, Any]:
        if parameters and not _is_read(statement):
            if postgres:
                parameters = scrub_json_objects(parameters)
            parameters = scrub_params(parameters)
        return statement, parameters


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process; migrations are applied on first use."""
    url = url or get_settings().db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = database_url(url)
            kwargs: dict[str, object] = {}
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
            elif parsed.get_backend_name() == "postgresql":
                kwargs.update(engine_options())
            engine = create_engine(parsed, **kwargs)
            _install_scrub_hook(engine)
            if is_sqlite(engine):
                _install_sqlite_hooks(engine)
            upgrade(engine)
            _engines[url] = engine
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent). One process migrates at a time: SQLite's
    write lock, or a transaction-scoped advisory lock on PostgreSQL; the next process then finds the
    schema at `revision` and does nothing."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    bound = engine.execution_options(immediate=True) if is_sqlite(engine) else engine
    with bound.begin() as conn:
        if is_postgres(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def dispose_engines() -> None:
    from core.storage import wakeups

    wakeups.stop_listeners()
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def db_clock(conn: Connection | Session) -> Any:
    """"Now" for a statement's values and comparisons: the database's `now()` on PostgreSQL, so heartbeats
    written on one host and judged stale on another use one clock; this host's UTC clock on SQLite, which
    lives on one host."""
    from sqlalchemy import func

    from core.storage.models import utcnow

    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return func.now() if bind.dialect.name == "postgresql" else utcnow()


Row = TypeVar("Row", bound=SQLModel)


def fetch(model: type[Row], key: Any, what: str, session: Optional[Session] = None) -> Row:
    """The row with this primary key, or `Missing` saying "<what> '<key>' does not exist"."""
    if session is None:
        with read_session() as s:
            return fetch(model, key, what, s)
    row = session.get(model, key)
    if row is None:
        raise Missing(f"{what} {key!r} does not exist")
    return row


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    with Session(get_engine(url), expire_on_commit=False) as session:
        yield session


def _write_lock(engine: Engine) -> AbstractContextManager[object]:
    if not is_sqlite(engine):
        return nullcontext()
    with _lock:
        return _write_locks.setdefault(str(engine.url), threading.RLock())


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """A transaction that holds the write lock from its first statement.

    Commits on success, rolls back on any exception: callers never see a
    half-applied change.
    """
    engine = get_engine(url)
    bound = engine.execution_options(immediate=True) if is_sqlite(engine) else engine
    with _write_lock(engine), Session(bound, expire_on_commit=False) as session:
        session.info[_AFTER] = []
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        after = session.info.pop(_AFTER)
    for fn in after:  # committed, the connection back in the pool and the write lock released
        fn()


_AFTER = "ace_after_session"


def after_session(session: Session, fn: Any) -> None:
    """Run `fn()` once the write session has committed and given its connection back: follow-up work that
    opens its own connections (embedding the bullets just written) must not hold this one meanwhile, or a
    busy pool of writers could wait on itself. Outside `write_session`, right after the commit."""
    pending = session.info.get(_AFTER)
    if pending is not None:
        pending.append(fn)
    else:
        event.listen(session, "after_commit", lambda _s: fn(), once=True)


def connection_writer(conn: Connection) -> "RowWriter":
    """Plain statements inside the transaction a Session (or Core connection) already holds: for rows
    the unit of work would only track. On SQLite they go straight to its DBAPI connection."""
    if conn.dialect.name == "sqlite":
        return RowWriter(conn.connection.dbapi_connection, conn.dialect)
    return RowWriter(None, conn.dialect, core=conn)


# ----------------------------------------------------------- the hot write path
#
# The loop writes a trace event per step and the runner a few rows per task.
# Through a Session each such transaction costs about 0.8 ms of Python; the
# same statements through the DBAPI connection cost under 0.1 ms. `row_writer`
# keeps SQLAlchemy's own column types (aware UTC datetimes, JSON, booleans) by
# running their bind processors, so the rows read back exactly as ORM writes.


def run_raw(conn: Any, sql: str, params: Any = (), many: bool = False) -> Any:
    """Run one statement on a SQLite DBAPI connection, its errors raised as SQLAlchemy's
    (OperationalError, IntegrityError...) exactly as a Session's statements raise them, so
    callers and the service's error handlers (503 for a busy database) see one family."""
    if params and not _is_read(sql):
        params = scrub_params(params)  # as the engine's hook does for SQLAlchemy's statements
    try:
        return conn.executemany(sql, params) if many else conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params if not many else None, exc, sqlite3.Error) from exc


def stored_form(column: Any, dialect: Any) -> Any:
    """The function that turns a Python value into what `column` stores on this dialect (the dialect's
    own implementation of the type, e.g. SQLite's datetime text), or None when it stores values as is."""
    return column.type.dialect_impl(dialect).bind_processor(dialect)


class RowWriter:
    """Plain INSERT / UPDATE statements on one open transaction, typed by the table's columns."""

    _procs: dict[tuple[str, str], dict[str, Any]] = {}

    def __init__(self, conn: Any, dialect: Any, core: Connection | None = None):
        self.conn, self.dialect, self.core = conn, dialect, core

    def _processors(self, table: Table) -> dict[str, Any]:
        key = (self.dialect.name, table.name)
        procs = self._procs.get(key)
        if procs is None:
            procs = {c.name: stored_form(c, self.dialect) for c in table.columns}
            self._procs[key] = procs
        return procs

    def _values(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        procs = self._processors(table)
        out = {}
        for name, v in values.items():
            proc = procs[name]  # KeyError: not a column of this table
            out[name] = proc(v) if proc is not None else v  # processors take None too (JSON stores 'null')
        return out

    def insert(self, table: Table, rows: Iterable[dict[str, Any] | SQLModel]) -> None:
        """Insert rows given as column dicts or new table objects (whose defaults are already filled)."""
        by_cols: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            values = row if isinstance(row, dict) else row_values(row)
            by_cols.setdefault(tuple(values), []).append(values)
        for cols, group in by_cols.items():
            if self.core is not None:
                self.core.execute(insert(table), group)
                continue
            sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            run_raw(self.conn, sql, [tuple(self._values(table, v).values()) for v in group], many=True)

    def insert_one(self, row: SQLModel) -> Any:
        """Insert one new table object; its generated primary key."""
        table = type(row).__table__  # type: ignore[attr-defined]
        values = row_values(row)
        if self.core is not None:
            key = self.core.execute(insert(table).values(**values)).inserted_primary_key
            assert key is not None  # a single-row INSERT always reports its key
            return key[0]
        sql = f"INSERT INTO {table.name} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
        return run_raw(self.conn, sql, tuple(self._values(table, values).values())).lastrowid

    def add(self, rows: Iterable[SQLModel]) -> None:
        """Insert new table objects, of any tables, grouped into one statement per table."""
        by_table: dict[Table, list[SQLModel]] = {}
        for row in rows:
            by_table.setdefault(type(row).__table__, []).append(row)  # type: ignore[attr-defined]
        for table, group in by_table.items():
            self.insert(table, group)

    def update(self, table: Table, where: dict[str, Any], values: dict[str, Any]) -> int:
        """UPDATE table SET values WHERE each `where` column equals its value; the rows changed."""
        if not values:
            return 0
        if self.core is not None:
            stmt = update(table).values(**values)
            for k, v in where.items():
                stmt = stmt.where(table.c[k] == v)
            return int(self.core.execute(stmt).rowcount)
        vals, keys = self._values(table, values), self._values(table, where)
        sql = (f"UPDATE {table.name} SET {', '.join(f'{k} = ?' for k in vals)} "
               f"WHERE {' AND '.join(f'{k} = ?' for k in keys)}")
        return int(run_raw(self.conn, sql, (*vals.values(), *keys.values())).rowcount)

    def lock(self, table: Table, key: str, value: Any) -> None:
        """Hold the row `table.key = value` until this transaction ends (`SELECT ... FOR NO KEY UPDATE`), for a
        read-modify-write on PostgreSQL; on SQLite the transaction already holds the write lock."""
        if self.core is not None and self.dialect.name == "postgresql":
            # NO KEY UPDATE: rows that refer to this one (foreign keys take KEY SHARE) can still be inserted
            self.core.execute(text(f"SELECT 1 FROM {table.name} WHERE {key} = :v FOR NO KEY UPDATE"), {"v": value})

    def _query(self, sql: str, params: Sequence[Any]) -> Any:
        """A cursor (or Core result) for a query written with `?` placeholders."""
        if self.core is not None:
            return self.core.execute(*_named(sql, params))
        return run_raw(self.conn, sql, tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a query written with `?` placeholders, values as the driver gives them."""
        return [tuple(r) for r in self._query(sql, params).fetchall()]

    def row(self, sql: str, params: Sequence[Any] = ()) -> Optional[tuple[Any, ...]]:
        """One row of a query written with `?` placeholders, values as the driver gives them."""
        found = self._query(sql, params).fetchone()
        return tuple(found) if found is not None else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One value from a query written with `?` placeholders."""
        found = self.row(sql, params)
        return found[0] if found is not None else None


def _named(sql: str, params: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """A `?` query as a SQLAlchemy text() with named parameters, for databases other than SQLite."""
    for i in range(len(params)):
        sql = sql.replace("?", f":p{i}", 1)
    return text(sql), {f"p{i}": v for i, v in enumerate(params)}


def insert_unless_present(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True when this call inserted the row. Two transactions inserting
    the same key at once both succeed; the second waits for the first and then inserts nothing."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    stmt = dialect_insert(table).values(**values).on_conflict_do_nothing()
    # rowcount is not reliable here (psycopg reports 1 for a skipped row): ask for the key back instead
    return conn.execute(stmt.returning(*table.primary_key.columns)).first() is not None


def row_values(row: SQLModel) -> dict[str, Any]:
    """A table object's column values, as an INSERT takes them (an unset primary key left out)."""
    table = type(row).__table__  # type: ignore[attr-defined]
    values = {c.name: getattr(row, c.name) for c in table.columns}
    for c in table.primary_key.columns:
        if values.get(c.name) is None:
            values.pop(c.name, None)
    return values


_readers = threading.local()


def thread_reader(engine: Engine) -> Any:
    """This thread's own SQLite DBAPI connection for tiny hot reads, kept out of the pool: on the
    service's event loop a checkout must never wait for the pool (busy threads could exhaust it).
    One per thread, for the engine it last used (autocommit: it holds no snapshot between reads)."""
    held = getattr(_readers, "held", None)
    if held is not None and held[0] is engine:
        return held[1]
    if held is not None:
        try:
            held[1].close()
        except Exception:
            pass
    conn = engine.raw_connection()
    conn.detach()
    _readers.held = (engine, conn)
    return conn


def query_rows(sql: str, params: Sequence[Any] = (), url: str | None = None) -> list[tuple[Any, ...]]:
    """The rows of a read written with `?` placeholders, without a Session: for hot lookups. On SQLite
    through this thread's own connection; on PostgreSQL through the pool (a network round trip).
    Values come back as the driver gives them (no column types applied)."""
    engine = get_engine(url)
    if not is_sqlite(engine):
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(*_named(sql, params)).all()]
    return [tuple(r) for r in run_raw(thread_reader(engine), sql, tuple(params)).fetchall()]


def query_row(sql: str, params: Sequence[Any] = (), url: str | None = None) -> Optional[tuple[Any, ...]]:
    """The first row of `query_rows`, or None."""
    rows = query_rows(sql, params, url)
    return rows[0] if rows else None


@contextmanager
def row_writer(url: str | None = None) -> Iterator[RowWriter]:
    """A write transaction for hot append-only paths: committed on success, rolled back on any error."""
    engine = get_engine(url)
    if not is_sqlite(engine):
        with write_session(url) as s:
            yield connection_writer(s.connection())
        return
    with _write_lock(engine):
        conn = engine.raw_connection()
        try:
            run_raw(conn, "BEGIN IMMEDIATE")
            try:
                yield RowWriter(conn, engine.dialect)
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # SQLite may have ended the transaction itself (disk full, I/O error)
                    pass  # the caller's error is the one to see; the pool resets the connection anyway
                raise
            run_raw(conn, "COMMIT")
        finally:
            conn.close()
