"""The in-memory BM25 indexes: one per playbook, cached by version, built once and then updated.

A new playbook version re-reads only the bullets whose row changed, and a write
hands this process's index the rows it committed (`index_committed`), so a
query on a busy playbook seldom reads bullets at all. FTS5 stays the path for a
cold start of a large SQLite playbook: its index then builds in the background.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Optional

from sqlalchemy import Connection, text
from sqlmodel import Session

from core.retrieval.bm25 import BM25Index
from core.retrieval.rows import BULLET_TABLE
from core.storage.db import is_sqlite, read_session, stored_form
from core.storage.models import Bullet

log = logging.getLogger(__name__)

COLD_BUILD_ROWS = 20_000  # larger playbooks build their index in the background; FTS5 answers meanwhile
CACHE_PLAYBOOKS = 8  # playbooks whose index stays in memory

_lex: "OrderedDict[tuple[str, str], BM25Index]" = OrderedDict()
_lex_lock = threading.Lock()
_lex_building: set[tuple[str, str]] = set()
_META_SQL = ("SELECT pk, status, helpful, harmful, neutral, updated_at, section, length(content), source_episode_id "
             "FROM bullet WHERE playbook_id = :p")


def _full_rows(conn: Connection, playbook_id: str) -> Sequence[Any]:
    return conn.execute(text(_META_SQL.replace("FROM", ", content FROM")), {"p": playbook_id}).all()


def _refresh(conn: Connection, idx: BM25Index, playbook_id: str, version: int) -> None:
    """Bring the index to `version`, re-reading only the rows whose signature moved."""
    meta = conn.execute(text(_META_SQL), {"p": playbook_id}).all()
    changed = [int(r[0]) for r in meta if idx.sig.get(int(r[0])) != tuple(r[1:8])]
    if len(meta) < len(idx.sig) or len(changed) > 0.2 * max(1, len(meta)) or idx.stale():
        idx.build(_full_rows(conn, playbook_id), version)
        return
    rows: list[Any] = []
    for i in range(0, len(changed), 500):
        chunk = changed[i:i + 500]
        rows += conn.execute(text(_META_SQL.replace("FROM", ", content FROM") +
                                  f" AND pk IN ({','.join(str(pk) for pk in chunk)})"), {"p": playbook_id}).all()
    idx.apply_changes(rows, version)


_build_locks: dict[tuple[str, str], threading.Lock] = {}


def _build_lock(key: tuple[str, str]) -> threading.Lock:
    """One build of a playbook's index at a time: a request arriving while the service's warm-up (or
    another request) builds it waits for that build instead of doing the same work beside it."""
    with _lex_lock:
        return _build_locks.setdefault(key, threading.Lock())


def _build_in_background(url: str, playbook_id: str) -> None:
    key = (url, playbook_id)

    def run() -> None:
        try:
            with _build_lock(key), read_session(url) as s:
                conn = s.connection()
                version = conn.execute(text("SELECT current_version FROM playbook WHERE id = :p"),
                                       {"p": playbook_id}).scalar()
                idx = BM25Index()
                idx.build(_full_rows(conn, playbook_id), int(version or 0))
            _store_lex(key, idx)
        except Exception as exc:  # the FTS5 path keeps answering; the next query tries again
            log.warning("building the lexical index of %s failed: %s", playbook_id, exc)
        finally:
            with _lex_lock:
                _lex_building.discard(key)

    with _lex_lock:
        if key in _lex_building:
            return
        _lex_building.add(key)
    threading.Thread(target=run, name=f"lex-index-{playbook_id}", daemon=True).start()


def cached_index(key: tuple[str, str]) -> Optional[BM25Index]:
    """The cached index of (database url, playbook), marked as recently used."""
    with _lex_lock:
        idx = _lex.get(key)
        if idx is not None:
            _lex.move_to_end(key)
    return idx


def clear_indexes() -> None:
    """Forget every cached index (tests, benchmarks): the next query builds afresh."""
    with _lex_lock:
        _lex.clear()


def _store_lex(key: tuple[str, str], idx: BM25Index) -> None:
    with _lex_lock:
        _lex[key] = idx
        _lex.move_to_end(key)
        while len(_lex) > CACHE_PLAYBOOKS:
            _lex.popitem(last=False)


def index_committed(url: str, playbook_id: str, old_version: int, new_version: int,
                    bullets: Sequence[Bullet], dialect: Any) -> None:
    """Bring this process's index from `old_version` to `new_version` with the bullets a write just
    committed (copies nobody changes), so the next query neither scans the playbook for them nor
    reads them back. Any other state (another writer got there first, no index yet) is left to `_refresh`."""
    idx = cached_index((url, playbook_id))
    if idx is None:
        return
    stamp = stored_form(BULLET_TABLE.c.updated_at, dialect)  # as `_refresh` reads it
    rows = [(b.pk, b.status, b.helpful, b.harmful, b.neutral,  # the shape of `_META_SQL`, plus content
             stamp(b.updated_at) if stamp is not None else b.updated_at, b.section, len(b.content),
             b.source_episode_id, b.content) for b in bullets]
    with idx.lock:
        if idx.version != old_version:
            return
        try:
            idx.apply_changes(rows, new_version, bullets)
            if idx.stale():
                idx.version = -1  # the next query rebuilds it (as `_refresh` would)
        except Exception as exc:  # runs inside a commit that already succeeded: never fail the caller
            log.warning("updating the lexical index of %s failed; it will be rebuilt: %s", playbook_id, exc)
            idx.sig.clear()
            idx.version = -1


def lexical_index(session: Session, playbook_id: str, version: int,
                  wait: bool = False) -> Optional[BM25Index]:
    """The playbook's in-memory BM25 index at `version`; None while a large one is still building
    (the caller then uses FTS5). `wait=True` builds it here, whatever its size."""
    url = str(session.get_bind().url)  # type: ignore[union-attr]
    key = (url, playbook_id)
    idx = cached_index(key)
    conn = session.connection()
    if idx is None:
        if not wait and is_sqlite(session.get_bind()):  # type: ignore[arg-type]
            n = conn.execute(text("SELECT count(*) FROM bullet WHERE playbook_id = :p"), {"p": playbook_id}).scalar()
            if int(n or 0) > COLD_BUILD_ROWS:
                _build_in_background(url, playbook_id)
                return None
        with _build_lock(key):
            idx = cached_index(key)  # built by whoever held the lock before us
            if idx is None:
                idx = BM25Index()
                idx.build(_full_rows(conn, playbook_id), version)
                _store_lex(key, idx)
                return idx
    if idx.version != version:
        with idx.lock:
            if idx.version != version:
                _refresh(conn, idx, playbook_id, version)
    return idx


def warm(playbook_id: str) -> None:
    """Build a playbook's lexical index now (e.g. when a service starts), so no query waits on it."""
    with read_session() as s:
        version = s.connection().execute(text("SELECT current_version FROM playbook WHERE id = :p"),
                                         {"p": playbook_id}).scalar()
        if version is not None:
            lexical_index(s, playbook_id, int(version), wait=True)
