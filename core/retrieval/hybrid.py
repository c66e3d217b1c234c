"""Hybrid search: semantic similarity, BM25, counters and provenance, fused into one ranking.

Tasks rarely use the words of the strategy that would save them, so BM25 alone
misses most relevant bullets; embeddings close much of that gap, and the
counters and the task a bullet was learned from break the remaining ties. With
no embedder the same code ranks lexically.

A lexical query on an unchanged playbook reads only the playbook's version (one
raw DBAPI SELECT) and answers from the in-memory index and its per-version
bullets (`_search_cached`); anything else goes through a Session, where FTS5
answers while a large playbook's index is still building.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import Connection, text
from sqlmodel import Session, col, select

from core.config import get_settings
from core.retrieval.bm25 import BM25Index
from core.retrieval.embeddings import Embedder, embed_query, get_embedder
from core.retrieval.expansion import expand_query
from core.retrieval.fts import fts_rows
from core.retrieval.lexical import cached_index, clear_indexes, lexical_index
from core.retrieval.ranking import (
    LEXICAL_SATURATION,
    LexicalColumns,
    RankWeights,
    Retrieved,
    counter_score,
    rank_lexical,
)
from core.retrieval.rows import BULLET_TABLE, bullets_where
from core.retrieval.text import query_terms, word_cosine
from core.retrieval.vectors import clear_vectors, dense_scores, vector_index
from core.storage.db import get_engine, is_sqlite, query_row, query_rows, read_session
from core.storage.models import Bullet


def _provenance_texts(session: Session, episode_ids: Sequence[Optional[str]]) -> dict[str, str]:
    ids = sorted({e for e in episode_ids if e})
    if not ids:
        return {}
    rows = session.connection().execute(
        text(f"SELECT id, task FROM episode WHERE id IN ({','.join(f':e{i}' for i in range(len(ids)))})"),
        {f"e{i}": v for i, v in enumerate(ids)}).all()
    return {r[0]: r[1] for r in rows}


def _bullets_by_pk(conn: Connection, pks: Sequence[int], idx: Optional[BM25Index] = None,
                   version: Optional[int] = None) -> dict[int, Bullet]:
    """Active bullets by pk: detached Bullet objects, built without ORM loading.

    With the lexical index at `version`, bullets come from (and go into) its
    per-version cache, so repeated queries on an unchanged playbook build no
    objects at all. Cached bullets are shared between callers: read them, never
    change them.
    """
    if not pks:
        return {}
    use_cache = idx is not None and version is not None
    out: dict[int, Bullet] = {}
    if use_cache:
        with idx.lock:  # type: ignore[union-attr]
            if idx.version == version:  # type: ignore[union-attr]
                cached = idx.bullets  # type: ignore[union-attr]
                out = {int(p): cached[int(p)] for p in pks if int(p) in cached}
            else:
                use_cache = False
    missing = [int(p) for p in pks if int(p) not in out]
    if not missing:
        return out
    fresh = {int(b.pk): b for b in  # type: ignore[arg-type]
             bullets_where(conn, BULLET_TABLE.c.pk.in_(missing), BULLET_TABLE.c.status == "active")}
    if use_cache:
        with idx.lock:  # type: ignore[union-attr]
            if idx.version == version:  # type: ignore[union-attr]
                idx.bullets.update(fresh)  # type: ignore[union-attr]
    out.update(fresh)
    return out


class NotCached(Exception):
    """Under `cached_only()`: the query needs more than the in-memory index (a rebuild, a model call)."""


_cached_only: ContextVar[bool] = ContextVar("ace_retrieval_cached_only", default=False)


@contextmanager
def cached_only() -> Iterator[None]:
    """Inside: `search` answers from memory and one indexed read, or raises NotCached at once.

    For callers on an event loop: they run the cheap common case in place and
    hand only the rest (index refresh, cold bullets, embedders) to a thread.
    """
    token = _cached_only.set(True)
    try:
        yield
    finally:
        _cached_only.reset(token)


_VERSION_RAW = "SELECT current_version FROM playbook WHERE id = ?"


@dataclass
class _Ranked:
    """A ranking the cached path made but could not return (bullets it has not read): the Session
    path takes it over at that version instead of scoring the query again."""

    version: int
    best: list


def _search_cached(playbook_id: str, q_text: str, k: int, weights: RankWeights,
                   synonyms: bool) -> Optional[list[Retrieved] | _Ranked]:
    """Lexical search from the cached index alone; None when it cannot rank, `_Ranked` when it
    ranked but lacks bullets to return.

    It answers when the index is at the playbook's current version (read through
    the raw DBAPI connection: ~0.03 ms against ~0.25 ms for a Session) and every
    bullet to return is in its per-version cache. The ranking is `rank_lexical`,
    as on the Session path.
    """
    engine = get_engine()
    key = (str(engine.url), playbook_id)
    idx = cached_index(key)
    if idx is None:
        return None
    row = query_row(_VERSION_RAW, (playbook_id,))
    if row is None or row[0] is None:
        return None
    version = int(row[0])
    terms = query_terms(q_text, synonyms)
    # never wait for the index lock (a refresh or rebuild may hold it for a while): the normal path will
    if not idx.lock.acquire(blocking=False):
        return None
    try:
        if idx.version != version:
            return None
        cols = LexicalColumns.of_index(idx, *idx.score(terms, max(50, 5 * k)))
    finally:
        idx.lock.release()
    tasks: dict[str, str] = {}
    if weights.provenance:
        ids = sorted({e for e in cols.episodes if e})
        if ids:
            tasks = dict(query_rows(f"SELECT id, task FROM episode WHERE id IN ({','.join('?' * len(ids))})",
                                    ids))
    best = rank_lexical(cols, q_text, tasks, k, weights)
    if not idx.lock.acquire(blocking=False):
        return None
    try:
        if idx.version != version:
            return None
        cached = idx.bullets
        out = []
        for pk, (sc, d) in best:
            b = cached.get(pk)
            if b is None:
                return _Ranked(version, best)
            out.append(Retrieved(b, sc, d))
        if len(out) < k:
            seen = {r.bullet.pk for r in out}
            order = idx.fallback_order()
            fill = [int(p) for p in idx.pks[order[:k - len(out) + len(seen)]] if int(p) not in seen][:k - len(out)]
            if any(pk not in cached for pk in fill):
                return _Ranked(version, best)
            out += _fallback_hits([cached[pk] for pk in fill], weights)
    finally:
        idx.lock.release()
    return out or None  # nothing at all (an empty playbook): the normal path decides what that means


def search(playbook_id: str, query: str, k: int, weights: RankWeights,
           embedder: Optional[Embedder] = None, expand: bool = False, synonyms: bool = True) -> list[Retrieved]:
    """Top-k active bullets by the fused score; best-rated others fill up when too few match."""
    if k <= 0:
        return []
    strict = _cached_only.get()
    if strict and not is_sqlite(get_engine()):
        raise NotCached("on a database server even the cached path reads over the network: not on an event loop")
    if strict and (expand or embedder is not None or get_settings().embedder != "none"):
        raise NotCached("query expansion or an embedder needs a model (and loading one takes time)")
    emb = embedder if embedder is not None else get_embedder()
    q_text = expand_query(query) if expand else query
    qvec = embed_query(q_text, emb) if emb is not None else None
    ranked: Optional[_Ranked] = None
    if qvec is None:
        hits = _search_cached(playbook_id, q_text, k, weights, synonyms)
        if isinstance(hits, _Ranked):
            ranked = hits
        elif hits is not None:
            return hits
    if strict:
        raise NotCached("the in-memory index cannot answer alone: not built, behind the playbook's version, "
                        "or bullets not read yet")
    limit = max(50, 5 * k)
    with read_session() as s:
        conn = s.connection()
        version = conn.execute(text("SELECT current_version FROM playbook WHERE id = :p"), {"p": playbook_id}).scalar()
        if version is None:
            return []
        lex_idx = lexical_index(s, playbook_id, int(version))
        if ranked is not None and lex_idx is not None and ranked.version == version:  # still current: reuse it
            return _hits(conn, lex_idx, int(version), ranked.best, k, weights)
        if lex_idx is not None:
            with lex_idx.lock:
                lex = LexicalColumns.of_index(lex_idx, *lex_idx.score(query_terms(q_text, synonyms), limit)).rows()
        else:
            lex = [tuple(r) for r in fts_rows(s, playbook_id, q_text, limit, synonyms=synonyms)]
        scored: dict[int, tuple[float, dict[str, float]]] = {}
        if qvec is not None and emb is not None:
            lex_norm = {int(r[0]): r[1] / (r[1] + LEXICAL_SATURATION) for r in lex}
            scored = dense_scores(vector_index(s, playbook_id, emb.name), qvec, lex_norm, k, weights)
        if scored:
            # lexical hits without a vector (not embedded yet) still compete
            plain = [r for r in lex if int(r[0]) not in scored]
            tasks = _provenance_texts(s, [r[5] for r in plain]) if weights.provenance else {}
            for pk, _, helpful, harmful, neutral, episode in plain:
                prov = word_cosine(q_text, tasks[episode]) if episode in tasks else 0.0
                cnt = counter_score(helpful, harmful, neutral)
                sc = {"semantic": 0.0, "lexical": lex_norm[pk], "counters": cnt, "provenance": prov}
                scored[pk] = (weights.lexical * sc["lexical"] + weights.counters * cnt + weights.provenance * prov, sc)
            best = sorted(scored.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        else:  # lexical only: the same ranking as the loop above, on arrays
            tasks = _provenance_texts(s, [r[5] for r in lex]) if weights.provenance else {}
            best = rank_lexical(LexicalColumns.of_rows(lex), q_text, tasks, k, weights)
        if lex_idx is not None:
            return _hits(conn, lex_idx, int(version), best, k, weights)
        bullets = _bullets_by_pk(conn, [pk for pk, _ in best])
        out = [Retrieved(bullets[pk], sc, d) for pk, (sc, d) in best if pk in bullets]
        if len(out) < k:
            out += _fallback(s, playbook_id, {r.bullet.pk for r in out}, k - len(out), weights)
    return out


def _hits(conn: Connection, idx: BM25Index, version: int, best: list, k: int,
          weights: RankWeights) -> list[Retrieved]:
    """A ranking's bullets (from the index's cache, or read and cached), then best-rated others up to k."""
    bullets = _bullets_by_pk(conn, [pk for pk, _ in best], idx, version)
    out = [Retrieved(bullets[pk], sc, d) for pk, (sc, d) in best if pk in bullets]
    if len(out) < k:
        out += _fallback_fast(conn, idx, version, {r.bullet.pk for r in out}, k - len(out), weights)
    return out


def _fallback_fast(conn: Connection, idx: BM25Index, version: int, seen: set[Optional[int]], n: int,
                   weights: RankWeights) -> list[Retrieved]:
    """`_fallback` from the cached counters: the best-rated live bullets not already chosen."""
    with idx.lock:
        order = idx.fallback_order()
        pks = [int(p) for p in idx.pks[order[:n + len(seen)]] if int(p) not in seen][:n]
    bullets = _bullets_by_pk(conn, pks, idx, version)
    return _fallback_hits([bullets[pk] for pk in pks if pk in bullets], weights)


def _fallback_hits(bullets: Sequence[Bullet], weights: RankWeights) -> list[Retrieved]:
    out = []
    for b in bullets:
        cnt = counter_score(b.helpful, b.harmful, b.neutral)
        out.append(Retrieved(b, weights.counters * cnt - 1.0, {"semantic": 0.0, "lexical": 0.0, "counters": cnt,
                                                               "provenance": 0.0, "fallback": 1.0}))
    return out


def _fallback(s: Session, playbook_id: str, seen: set[Optional[int]], n: int, weights: RankWeights) -> list[Retrieved]:
    """Best-rated unmatched bullets, so a new task still sees the playbook's proven strategies."""
    stmt = (select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.status == "active")
            .order_by((col(Bullet.helpful) - col(Bullet.harmful)).desc(), col(Bullet.pk)).limit(n + len(seen)))
    out: list[Retrieved] = []
    for b in s.exec(stmt):
        if b.pk not in seen and len(out) < n:
            cnt = counter_score(b.helpful, b.harmful, b.neutral)
            out.append(Retrieved(b, weights.counters * cnt - 1.0, {"semantic": 0.0, "lexical": 0.0, "counters": cnt,
                                                                   "provenance": 0.0, "fallback": 1.0}))
    return out


def clear_cache() -> None:
    """Forget the cached vectors and lexical indexes (tests, benchmarks): the next query loads afresh."""
    clear_vectors()
    clear_indexes()
