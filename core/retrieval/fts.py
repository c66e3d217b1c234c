"""Lexical search in the database: SQLite's FTS5, or PostgreSQL's full-text search (a GIN index over
`to_tsvector('english', content || ' ' || section)`, migration 0004).

FTS5 is the path while a large SQLite playbook's in-memory index builds. Dedup inside
a write asks here on both databases (`lexical_candidates`): it must not build or
refresh the in-memory index from rows its transaction may still roll back. The
database's ranking only picks a few candidates; whether one is a duplicate is decided
by the same similarity score on both, so both find the same duplicates.
"""

from collections.abc import Sequence
from typing import Any, Optional

from sqlalchemy import Connection, text
from sqlmodel import Session

from core.retrieval.lexical import cached_index
from core.retrieval.text import (
    COMMON_TERM_SHARE,
    MAX_RANKED_TERMS,
    PRUNE_FROM_ROWS,
    fts_query,
    query_terms,
    tsquery_text,
)
from core.storage.db import connection_writer, is_postgres, is_sqlite

_FTS_WEIGHTS = "bm25(1.0, 0.3)"  # bullet text counts more than its section name
_COLS = "b.pk, {rel}, b.helpful, b.harmful, b.neutral, b.source_episode_id"
_FTS_FAST = (f"SELECT {_COLS.format(rel='-f.rank')} FROM (SELECT rowid, rank FROM bullet_fts "
             f"WHERE bullet_fts MATCH :m AND rank MATCH '{_FTS_WEIGHTS}' ORDER BY rank LIMIT :inner) f "
             "JOIN bullet b ON b.pk = f.rowid WHERE b.playbook_id = :p AND b.status = 'active' "
             "ORDER BY f.rank LIMIT :n")
_FTS_COUNT = "SELECT count(*) FROM bullet_fts WHERE bullet_fts MATCH :m"
_FTS_EXACT = (f"SELECT {_COLS.format(rel='-bm25(bullet_fts, 1.0, 0.3)')} FROM bullet_fts "
              "JOIN bullet b ON b.pk = bullet_fts.rowid WHERE bullet_fts MATCH :m AND b.playbook_id = :p "
              "AND b.status = 'active' ORDER BY bm25(bullet_fts, 1.0, 0.3) LIMIT :n")


_PG_TSV = "to_tsvector('english', b.content || ' ' || b.section)"  # the expression of ix_bullet_tsv
_PG_SEARCH = (f"SELECT {_COLS.format(rel=f'ts_rank({_PG_TSV}, q.q)')} "
              "FROM bullet b, to_tsquery('english', :m) AS q(q) "
              f"WHERE {_PG_TSV} @@ q.q AND b.playbook_id = :p AND b.status = 'active' "
              "ORDER BY 2 DESC, b.pk LIMIT :n")


_df_cache: dict[tuple[str, str], tuple[int, int]] = {}  # (db, term) -> (documents matching, rows then)


def _prune_common(conn: Connection, match: str) -> str:
    """Drop query terms found in over a fifth of a large index.

    BM25 gives such terms almost no weight (FTS5 clamps their IDF near zero
    past half the index), yet scoring every row they match is what makes a
    query slow at 10,000+ bullets. Counts are cached per term and refreshed
    when the index has grown by a tenth.
    """
    total = int(conn.execute(text("SELECT coalesce(max(pk), 0) FROM bullet")).scalar() or 0)
    if total < PRUNE_FROM_ROWS:
        return match
    db = str(conn.engine.url)
    kept: list[tuple[int, str]] = []
    for term in match.split(" OR "):
        hit = _df_cache.get((db, term))
        if hit is None or total > hit[1] * 1.1:
            df = int(conn.execute(text("SELECT count(*) FROM bullet_fts WHERE bullet_fts MATCH :t"),
                                  {"t": term}).scalar() or 0)
            if len(_df_cache) > 100_000:
                _df_cache.clear()
            _df_cache[(db, term)] = hit = (df, total)
        kept.append((hit[0], term))
    rare = sorted((df, t) for df, t in kept if 0 < df <= COMMON_TERM_SHARE * total)[:MAX_RANKED_TERMS]
    if not rare and kept:
        rare = [min(kept)]  # only common words: keep the rarest so something still matches
    return " OR ".join(t for _, t in rare)


def fts_rows(session: Session, playbook_id: str, query: str, limit: int,
             synonyms: bool = True) -> Sequence[Any]:
    """(pk, relevance >= 0, helpful, harmful, neutral, source_episode_id) rows, best first: BM25 from FTS5
    on SQLite, `ts_rank` on PostgreSQL."""
    conn = session.connection()
    if is_postgres(conn):
        terms = tsquery_text(query, synonyms=synonyms)
        return conn.execute(text(_PG_SEARCH), {"m": terms, "p": playbook_id, "n": limit}).all() if terms else []
    match = fts_query(query, synonyms=synonyms)
    if not match or not is_sqlite(conn.engine):
        return []
    match = _prune_common(conn, match)
    params = {"m": match, "p": playbook_id, "n": limit, "inner": 4 * limit}
    # Fast path: FTS5 ranks inside its own index (ORDER BY rank LIMIT), then rows are kept by playbook;
    # when other playbooks' rows may have crowded this one out, the exact (slower) query runs.
    rows = conn.execute(text(_FTS_FAST), params).all()
    if len(rows) < limit and (conn.execute(text(_FTS_COUNT), params).scalar() or 0) > 4 * limit:
        rows = conn.execute(text(_FTS_EXACT), params).all()
    return rows


def lexical_candidates(session: Session, playbook_id: str, query: str, limit: int,
                       synonyms: bool = True, version: Optional[int] = None) -> list[tuple[int, str, float]]:
    """(bullet pk, content, relevance >= 0) by BM25, best first: plain rows, so a caller inside a
    write transaction (dedup) neither builds objects nor flushes for candidates it then discards.

    `version`: the playbook's committed version; when the in-memory index is at it, it ranks (no
    FTS5 statements), else FTS5 does. Either way only committed rows are candidates: the index is
    never built or refreshed here (inside a write transaction it would take rows that may roll back).
    """
    rows: Optional[Sequence[Any]] = None
    idx = cached_index((str(session.get_bind().url), playbook_id)) if version is not None else None  # type: ignore[union-attr]
    if idx is not None:
        with idx.lock:
            if idx.version == version:
                slots, bm25 = idx.score(query_terms(query, synonyms), limit)
                rows = [(int(idx.pks[i]), float(v)) for i, v in zip(slots, bm25)]
    if rows is None:
        rows = fts_rows(session, playbook_id, query, limit, synonyms)
    if not rows:
        return []
    pks = [int(r[0]) for r in rows]
    content = dict(connection_writer(session.connection()).rows(
        f"SELECT pk, content FROM bullet WHERE pk IN ({','.join('?' * len(pks))})", pks))
    return [(int(r[0]), content[r[0]], float(r[1])) for r in rows if r[0] in content]
