"""Hybrid retrieval: semantic similarity, BM25, counters and provenance, fused.

Tasks rarely use the words of the strategy that would save them, so BM25
alone misses most relevant bullets; embeddings close much of that gap, and the
counters and the task a bullet was learned from break the remaining ties. Every
signal stays visible per result (`Retrieved.scores`) and the weights are a
setting (ACE_RANK_WEIGHTS), so a person can see why a bullet was chosen and
change the blend. With no embedder the same code ranks lexically.

Vector search is numpy brute force over a per-playbook matrix cached in memory
and reloaded only when the playbook's version or its stored vectors change.
"""

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlmodel import Session, select

from core.config import Settings, get_settings
from core.db import is_sqlite, read_session
from core.embeddings import Embedder, embed_query, get_embedder
from core.models import Bullet

log = logging.getLogger(__name__)

__all__ = ["RankWeights", "Retrieved", "search", "lexical_candidates", "fts_query", "expand_query",
           "semantic_near_duplicate", "similar_pairs", "clear_cache", "counter_score"]

_WORD = re.compile(r"[a-z0-9_]+")
LEXICAL_SATURATION = 10.0  # FTS5 bm25 units; measured on data/retrieval_pairs.jsonl (bench/bench_retrieval.py)
_STOP = frozenset("a an and are as at be by for from has have how i if in into is it its of on or that the this "
                  "to was were what when which will with you your write function return returns given use using "
                  "should can do does my me we our so but not no than then there these those one get got".split())


@dataclass(frozen=True)
class RankWeights:
    """How retrieval blends its signals; shown to users beside each result.

    semantic: cosine of query and bullet vectors; lexical: BM25 squashed to
    [0, 1) as bm25 / (bm25 + 10), so a weak best match stays weak; counters: (helpful - harmful) / (total + 2); provenance:
    similarity of the query to the task the bullet was learned from.
    """

    semantic: float = 1.0
    lexical: float = 0.2
    counters: float = 0.05
    provenance: float = 0.25

    @classmethod
    def parse(cls, spec: str) -> "RankWeights":
        """'semantic=1,lexical=0.4' -> weights; unnamed signals keep their defaults."""
        values: dict[str, float] = {}
        names = {f.name for f in fields(cls)}
        for part in filter(None, (p.strip() for p in spec.replace(";", ",").split(","))):
            name, _, value = part.partition("=")
            name = name.strip().lower()
            if name not in names:
                raise ValueError(f"ACE_RANK_WEIGHTS: unknown signal {name!r}; use {', '.join(sorted(names))}")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"ACE_RANK_WEIGHTS: {part!r} needs a number, e.g. {name}=0.5") from None
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> "RankWeights":
        return cls.parse((settings or get_settings()).rank_weights)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Retrieved:
    bullet: Bullet
    score: float
    scores: dict[str, float]  # per signal, before weighting; "fallback": 1.0 when not matched at all


def counter_score(helpful: int, harmful: int, neutral: int) -> float:
    return (helpful - harmful) / (helpful + harmful + neutral + 2)


# ---------------------------------------------------------------------- lexical

# Words people use for a problem -> words strategies use for its fix. Generic programming
# vocabulary (porter-stemmed by FTS5 on both sides), not tuned to any one benchmark.
_SYNONYM_GROUPS = """
absent missing blank empty null none nan
average mean median
crash crashes error exception raise fails
slow slowly speed fast performance quadratic profile
duplicate duplicates dedupe deduplicate unique set
order ordering rank sorted sort
combine combining join merge concat concatenate stack
timestamp moment calendar date datetime time timezone
text string str
money price prices currency cents dollars decimal
simultaneous parallel concurrently concurrent async thread threads
freeze freezes hang hangs stall stalls block blocking timeout
spreadsheet export csv
document file files
expression pattern regex
mapping dictionary dict
array vector list numpy
tally count counter frequency often occurrences
reproducible identical seed random
huge big large memory ram
password secret login credentials hash
character characters unicode encoding
round rounding rounded
loop iterate iteration
callback closure lambda
compare comparison equal equality
precision float floating tolerance
overflow overflows negative int64
key keys dict
copy copies mutable shared
retry retries backoff transient
quote quoted quoting escape
whole integer int
empty nothing
""".strip().splitlines()
_SYNONYMS: dict[str, tuple[str, ...]] = {}
for _line in _SYNONYM_GROUPS:
    _group = _line.split()
    for _w in _group:
        _SYNONYMS[_w] = tuple(dict.fromkeys(_SYNONYMS.get(_w, ()) + tuple(x for x in _group if x != _w)))


def expand_terms(terms: Sequence[str]) -> list[str]:
    """Programming synonyms of the query's words, for tasks that say it differently."""
    out: list[str] = []
    for t in terms:
        out.extend(_SYNONYMS.get(t, ()))
    return out



def _terms(query: str) -> list[str]:
    return [t for t in dict.fromkeys(_WORD.findall(query.lower())) if len(t) > 1 and t not in _STOP]


def fts_query(query: str, max_terms: int = 64, synonyms: bool = True) -> str:
    """An FTS5 OR-query of the query's words plus their programming synonyms."""
    terms = _terms(query)[:max_terms]
    if synonyms:
        terms = list(dict.fromkeys(terms + expand_terms(terms)))
    return " OR ".join(f'"{t}"' for t in terms[: max_terms * 3])


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


_df_cache: dict[tuple[str, str], tuple[int, int]] = {}  # (db, term) -> (documents matching, rows then)
COMMON_TERM_SHARE = 0.1  # terms in more of the index than this are dropped from large queries
PRUNE_FROM_ROWS = 2000
MAX_RANKED_TERMS = 10  # the rarest terms carry nearly all of BM25's weight


def _prune_common(conn, match: str) -> str:  # type: ignore[no-untyped-def]
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
            df = int(conn.execute(text("SELECT count(*) FROM bullet_fts WHERE bullet_fts MATCH :t"), {"t": term}).scalar() or 0)
            if len(_df_cache) > 100_000:
                _df_cache.clear()
            _df_cache[(db, term)] = hit = (df, total)
        kept.append((hit[0], term))
    rare = sorted((df, t) for df, t in kept if 0 < df <= COMMON_TERM_SHARE * total)[:MAX_RANKED_TERMS]
    if not rare and kept:
        rare = [min(kept)]  # only common words: keep the rarest so something still matches
    return " OR ".join(t for _, t in rare)


def _lexical_rows(session: Session, playbook_id: str, query: str, limit: int, synonyms: bool = True) -> list:
    """(pk, bm25 >= 0, helpful, harmful, neutral, source_episode_id) rows; FTS5 only, empty elsewhere."""
    match = fts_query(query, synonyms=synonyms)
    if not match or not is_sqlite(session.get_bind()):  # type: ignore[arg-type]
        return []
    conn = session.connection()
    match = _prune_common(conn, match)
    params = {"m": match, "p": playbook_id, "n": limit, "inner": 4 * limit}
    # Fast path: FTS5 ranks inside its own index (ORDER BY rank LIMIT), then rows are kept by playbook;
    # when other playbooks' rows may have crowded this one out, the exact (slower) query runs.
    rows = conn.execute(text(_FTS_FAST), params).all()
    if len(rows) < limit and (conn.execute(text(_FTS_COUNT), params).scalar() or 0) > 4 * limit:
        rows = conn.execute(text(_FTS_EXACT), params).all()
    return rows


def lexical_candidates(session: Session, playbook_id: str, query: str, limit: int,
                       synonyms: bool = True) -> list[tuple[Bullet, float]]:
    """(bullet, relevance >= 0) by BM25, best first."""
    rows = _lexical_rows(session, playbook_id, query, limit, synonyms)
    if not rows:
        return []
    by_pk = {b.pk: b for b in session.exec(select(Bullet).where(Bullet.pk.in_([r[0] for r in rows])))}  # type: ignore[union-attr]
    return [(by_pk[r[0]], float(r[1])) for r in rows if r[0] in by_pk]


def _word_cosine(a: str, b: str) -> float:
    wa, wb = set(_terms(a)), set(_terms(b))
    return len(wa & wb) / float(np.sqrt(len(wa) * len(wb))) if wa and wb else 0.0


# ----------------------------------------------------------------- vector index


@dataclass
class _Index:
    """One playbook's vectors under one model, aligned by bullet pk (sorted)."""

    stamp: tuple[int, int]
    pks: np.ndarray  # int64, sorted
    matrix: np.ndarray  # (n, d) float32, unit rows
    task_rows: np.ndarray  # indices into pks of bullets with a provenance vector
    task_matrix: np.ndarray  # (len(task_rows), d)
    version: int = -1
    active: Optional[np.ndarray] = None  # bool (n,)
    counters: Optional[np.ndarray] = None  # float32 (n,)


_cache: "OrderedDict[tuple[str, str, str], _Index]" = OrderedDict()
_cache_lock = threading.Lock()
CACHE_PLAYBOOKS = 8


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _stamp(conn, playbook_id: str, model: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    version = conn.execute(text("SELECT current_version FROM playbook WHERE id = :p"), {"p": playbook_id}).scalar()
    eid = conn.execute(text("SELECT max(eid) FROM bulletembedding WHERE playbook_id = :p AND model = :m"),
                       {"p": playbook_id, "m": model}).scalar()
    return int(version or 0), int(eid or 0)


def _load_vectors(conn, playbook_id: str, model: str, stamp: tuple[int, int]) -> _Index:  # type: ignore[no-untyped-def]
    rows = conn.execute(text("SELECT bullet_pk, vector, task_vector FROM bulletembedding "
                             "WHERE playbook_id = :p AND model = :m ORDER BY bullet_pk"),
                        {"p": playbook_id, "m": model}).all()
    if not rows:
        return _Index(stamp, np.zeros(0, np.int64), np.zeros((0, 1), np.float32), np.zeros(0, np.int64),
                      np.zeros((0, 1), np.float32))
    dims = len(rows[0][1]) // 4
    rows = [r for r in rows if len(r[1]) == dims * 4]
    pks = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dims).astype(np.float32)
    with_task = [(i, r[2]) for i, r in enumerate(rows) if r[2] is not None and len(r[2]) == dims * 4]
    task_rows = np.array([i for i, _ in with_task], dtype=np.int64)
    task_matrix = (np.frombuffer(b"".join(t for _, t in with_task), dtype="<f4").reshape(len(with_task), dims)
                   .astype(np.float32) if with_task else np.zeros((0, dims), np.float32))
    return _Index(stamp, pks, matrix, task_rows, task_matrix)


def _load_meta(conn, idx: _Index, playbook_id: str, version: int) -> None:  # type: ignore[no-untyped-def]
    """Counters and status change with every version; vectors only when re-embedded."""
    rows = conn.execute(text("SELECT pk, helpful, harmful, neutral, status = 'active' FROM bullet "
                             "WHERE playbook_id = :p ORDER BY pk"), {"p": playbook_id}).all()
    arr = np.array(rows, dtype=np.float64) if rows else np.zeros((0, 5))
    active = np.zeros(len(idx.pks), dtype=bool)
    counters = np.zeros(len(idx.pks), dtype=np.float32)
    if len(arr) and len(idx.pks):
        pos = np.searchsorted(arr[:, 0], idx.pks)
        ok = (pos < len(arr)) & (arr[np.minimum(pos, len(arr) - 1), 0] == idx.pks)
        sel = arr[pos[ok]]
        active[ok] = sel[:, 4] > 0
        counters[ok] = (sel[:, 1] - sel[:, 2]) / (sel[:, 1] + sel[:, 2] + sel[:, 3] + 2)
    idx.active, idx.counters, idx.version = active, counters, version


def vector_index(session: Session, playbook_id: str, model: str) -> _Index:
    """The cached index, reloaded only when its stamp (version, newest vector id) moved."""
    conn = session.connection()
    stamp = _stamp(conn, playbook_id, model)
    key = (str(session.get_bind().url), playbook_id, model)  # type: ignore[union-attr]
    with _cache_lock:
        idx = _cache.get(key)
        if idx is not None:
            _cache.move_to_end(key)
    if idx is None or idx.stamp[1] != stamp[1]:
        idx = _load_vectors(conn, playbook_id, model, stamp)
    if idx.version != stamp[0] or idx.active is None:
        idx = _Index(stamp, idx.pks, idx.matrix, idx.task_rows, idx.task_matrix)
        _load_meta(conn, idx, playbook_id, stamp[0])
    with _cache_lock:
        _cache[key] = idx
        while len(_cache) > CACHE_PLAYBOOKS:
            _cache.popitem(last=False)
    return idx


# --------------------------------------------------------------- query expansion


class _Pitfalls(BaseModel):
    pitfalls: list[str] = Field(default_factory=list, description="3 to 6 short likely pitfalls or techniques")


_expansions: "OrderedDict[tuple[str, str], str]" = OrderedDict()
_exp_lock = threading.Lock()

_EXPAND_SYSTEM = ("You help retrieve strategies for a programming task. List 3 to 6 short phrases naming the "
                  "pitfalls, techniques or library functions most likely to matter for it. Use the usual "
                  "technical terms. Reply as JSON: {\"pitfalls\": [\"...\"]}.")


def expand_query(task: str, settings: Optional[Settings] = None) -> str:
    """The task plus model-written likely pitfalls, cached per task; the task alone on any failure."""
    s = settings or get_settings()
    if not s.llm_configured:
        return task
    key = (s.model, task)
    with _exp_lock:
        if key in _expansions:
            return _expansions[key]
    try:
        from core.llm import LLMClient

        res = LLMClient(s).structured("expand", [{"role": "system", "content": _EXPAND_SYSTEM},
                                                 {"role": "user", "content": task[:4000]}], _Pitfalls)
        extra = "; ".join(p.strip()[:200] for p in res.value.pitfalls[:6] if p.strip())
    except Exception as exc:  # LLMError and friends: retrieval must still answer
        log.warning("query expansion failed, using the task alone: %s", exc)
        return task
    out = f"{task}\nLikely pitfalls: {extra}" if extra else task
    with _exp_lock:
        _expansions[key] = out
        while len(_expansions) > 512:
            _expansions.popitem(last=False)
    return out


# ----------------------------------------------------------------------- search


def _provenance_texts(session: Session, episode_ids: Sequence[Optional[str]]) -> dict[str, str]:
    ids = sorted({e for e in episode_ids if e})
    if not ids:
        return {}
    rows = session.connection().execute(
        text(f"SELECT id, task FROM episode WHERE id IN ({','.join(':e%d' % i for i in range(len(ids)))})"),
        {f"e{i}": v for i, v in enumerate(ids)}).all()
    return {r[0]: r[1] for r in rows}


def search(playbook_id: str, query: str, k: int, weights: RankWeights,
           embedder: Optional[Embedder] = None, expand: bool = False, synonyms: bool = True) -> list[Retrieved]:
    """Top-k active bullets by the fused score; best-rated others fill up when too few match."""
    if k <= 0:
        return []
    q_text = expand_query(query) if expand else query
    emb = embedder if embedder is not None else get_embedder()
    qvec = embed_query(q_text, emb) if emb is not None else None
    with read_session() as s:
        lex = _lexical_rows(s, playbook_id, q_text, max(50, 5 * k), synonyms=synonyms)
        lex_norm = {int(r[0]): r[1] / (r[1] + LEXICAL_SATURATION) for r in lex}
        scored: dict[int, tuple[float, dict[str, float]]] = {}
        if qvec is not None and emb is not None:
            scored = _dense(vector_index(s, playbook_id, emb.name), qvec, lex_norm, k, weights)
        # lexical hits without a vector (no embedder, or not embedded yet) still compete
        plain = [r for r in lex if int(r[0]) not in scored]
        tasks = _provenance_texts(s, [r[5] for r in plain])
        for pk, _, helpful, harmful, neutral, episode in plain:
            prov = _word_cosine(q_text, tasks[episode]) if episode in tasks else 0.0
            cnt = counter_score(helpful, harmful, neutral)
            sc = {"semantic": 0.0, "lexical": lex_norm[pk], "counters": cnt, "provenance": prov}
            scored[pk] = (weights.lexical * sc["lexical"] + weights.counters * cnt + weights.provenance * prov, sc)
        best = sorted(scored.items(), key=lambda kv: kv[1][0], reverse=True)[:k]
        bullets = {b.pk: b for b in s.exec(select(Bullet).where(  # type: ignore[union-attr]
            Bullet.pk.in_([pk for pk, _ in best]), Bullet.status == "active"))} if best else {}  # type: ignore[union-attr]
        out = [Retrieved(bullets[pk], sc, d) for pk, (sc, d) in best if pk in bullets]
        if len(out) < k:
            out += _fallback(s, playbook_id, {r.bullet.pk for r in out}, k - len(out), weights)
    return out


def _dense(idx: _Index, qvec: np.ndarray, lex_norm: dict[int, float], k: int,
           weights: RankWeights) -> dict[int, tuple[float, dict[str, float]]]:
    """Fused scores over every embedded bullet (numpy brute force); the top k of them."""
    if not len(idx.pks) or idx.matrix.shape[1] != qvec.shape[0] or idx.active is None or idx.counters is None:
        return {}
    sem = idx.matrix @ qvec
    prov = np.zeros_like(sem)
    if len(idx.task_rows):
        prov[idx.task_rows] = idx.task_matrix @ qvec
    fused = weights.semantic * sem + weights.provenance * prov + weights.counters * idx.counters
    if lex_norm:
        pks = np.fromiter(lex_norm, dtype=np.int64, count=len(lex_norm))
        vals = np.fromiter(lex_norm.values(), dtype=np.float32, count=len(lex_norm))
        pos = np.minimum(np.searchsorted(idx.pks, pks), len(idx.pks) - 1)
        hit = idx.pks[pos] == pks
        fused[pos[hit]] += weights.lexical * vals[hit]
    fused[~idx.active] = -np.inf
    n = min(k, int(idx.active.sum()))
    if n <= 0:
        return {}
    best = np.argpartition(-fused, n - 1)[:n]
    return {int(idx.pks[i]): (float(fused[i]), {"semantic": float(sem[i]), "lexical": lex_norm.get(int(idx.pks[i]), 0.0),
                                                "counters": float(idx.counters[i]), "provenance": float(prov[i])})
            for i in best}


def _fallback(s: Session, playbook_id: str, seen: set[Optional[int]], n: int, weights: RankWeights) -> list[Retrieved]:
    """Best-rated unmatched bullets, so a new task still sees the playbook's proven strategies."""
    stmt = (select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.status == "active")
            .order_by((Bullet.helpful - Bullet.harmful).desc(), Bullet.pk).limit(n + len(seen)))
    out = []
    for b in s.exec(stmt):
        if b.pk not in seen and len(out) < n:
            cnt = counter_score(b.helpful, b.harmful, b.neutral)
            out.append(Retrieved(b, weights.counters * cnt - 1.0, {"semantic": 0.0, "lexical": 0.0, "counters": cnt,
                                                                   "provenance": 0.0, "fallback": 1.0}))
    return out


# ------------------------------------------------------------ dedup and merging


def semantic_near_duplicate(session: Session, playbook_id: str, content: str, threshold: float,
                            embedder: Optional[Embedder] = None) -> Optional[tuple[Bullet, float]]:
    """The active bullet closest in meaning to `content`, if its cosine reaches `threshold`."""
    emb = embedder if embedder is not None else get_embedder()
    if emb is None:
        return None
    qvec = embed_query(content, emb)
    if qvec is None:
        return None
    idx = vector_index(session, playbook_id, emb.name)
    if not len(idx.pks) or idx.matrix.shape[1] != qvec.shape[0]:
        return None
    sims = idx.matrix @ qvec
    sims[~idx.active] = -np.inf  # type: ignore[operator]
    i = int(np.argmax(sims))
    if sims[i] < threshold:
        return None
    b = session.get(Bullet, int(idx.pks[i]))
    return (b, float(sims[i])) if b is not None and b.status == "active" else None


def similar_pairs(playbook_id: str, threshold: Optional[float] = None, limit: int = 20,
                  among: Optional[Sequence[str]] = None) -> list[tuple[str, str, float]]:
    """Pairs of active bullets (ids) that mean nearly the same: MERGE suggestions for the Curator.

    Compares `among` (bullet ids, e.g. the ones just touched) against all, or
    every pair when the playbook is small enough (<= 5,000 bullets).
    """
    emb = get_embedder()
    if emb is None:
        return []
    thr = get_settings().semantic_dedup_threshold if threshold is None else threshold
    with read_session() as s:
        idx = vector_index(s, playbook_id, emb.name)
        live = np.flatnonzero(idx.active) if idx.active is not None else np.zeros(0, np.int64)
        ids = dict(s.connection().execute(text("SELECT pk, id FROM bullet WHERE playbook_id = :p"),
                                          {"p": playbook_id}).all())
    if len(live) < 2:
        return []
    if among is not None:
        want = {pk for pk, bid in ids.items() if bid in set(among)}
        rows = np.array([i for i in live if int(idx.pks[i]) in want], dtype=np.int64)
    elif len(live) <= 5000:
        rows = live
    else:
        return []
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(rows), 512):
        block = rows[start:start + 512]
        sims = idx.matrix[block] @ idx.matrix[live].T
        for r, c in zip(*np.nonzero(sims >= thr)):
            a, b = int(idx.pks[block[r]]), int(idx.pks[live[c]])
            if a != b:
                out[(min(a, b), max(a, b))] = float(sims[r, c])
    best = sorted(out.items(), key=lambda kv: kv[1], reverse=True)[:limit]
    return [(ids[a], ids[b], round(v, 4)) for (a, b), v in best]
