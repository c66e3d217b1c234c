"""Hybrid retrieval: semantic similarity, BM25, counters and provenance, fused.

Tasks rarely use the words of the strategy that would save them, so BM25
alone misses most relevant bullets; embeddings close much of that gap, and the
counters and the task a bullet was learned from break the remaining ties. Every
signal stays visible per result (`Retrieved.scores`) and the weights are a
setting (ACE_RANK_WEIGHTS), so a person can see why a bullet was chosen and
change the blend. With no embedder the same code ranks lexically.

Vector search is numpy brute force over a per-playbook matrix cached in memory
and reloaded only when the playbook's version or its stored vectors change.
BM25 runs over an in-memory per-playbook index (numpy postings, Porter stems
like FTS5's tokenizer) cached the same way and updated from only the changed
rows on a new version; SQLite FTS5 answers while a large playbook's index is
still building, and for dedup inside a write. The top k are read with one plain
SELECT, not through the ORM, and kept per index version: a lexical query on an
unchanged playbook reads only the playbook's version (one raw DBAPI SELECT) and
answers from memory (`_search_cached`).
"""

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import configure_mappers, instrumentation, make_transient_to_detached
from sqlmodel import Session, select

from core.config import Settings, get_settings
from core.storage.db import connection_writer, get_engine, is_sqlite, read_session, run_raw, stored_form, thread_reader
from core.retrieval.embeddings import Embedder, embed_query, get_embedder
from core.storage.models import Bullet

log = logging.getLogger(__name__)

__all__ = ["RankWeights", "Retrieved", "search", "lexical_candidates", "fts_query", "expand_query", "query_terms",
           "lexical_index", "warm", "porter", "cached_only", "NotCached",
           "semantic_near_duplicate", "similar_pairs", "clear_cache", "counter_score", "index_committed",
           "detached_copy", "bullets_where"]

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
                       synonyms: bool = True, version: Optional[int] = None) -> list[tuple[int, str, float]]:
    """(bullet pk, content, relevance >= 0) by BM25, best first: plain rows, so a caller inside a
    write transaction (dedup) neither builds objects nor flushes for candidates it then discards.

    `version`: the playbook's committed version; when the in-memory index is at it, it ranks (no
    FTS5 statements), else FTS5 does. Either way only committed rows are candidates: the index is
    never built or refreshed here (inside a write transaction it would take rows that may roll back).
    """
    rows = None
    idx = _lex_get((str(session.get_bind().url), playbook_id)) if version is not None else None  # type: ignore[union-attr]
    if idx is not None:
        with idx.lock:
            if idx.version == version:
                slots, bm25 = idx.score(query_terms(query, synonyms), limit)
                rows = [(int(idx.pks[i]), float(v)) for i, v in zip(slots, bm25)]
    if rows is None:
        rows = _lexical_rows(session, playbook_id, query, limit, synonyms)
    if not rows:
        return []
    pks = [int(r[0]) for r in rows]
    content = dict(connection_writer(session.connection()).rows(
        f"SELECT pk, content FROM bullet WHERE pk IN ({','.join('?' * len(pks))})", pks))
    return [(int(r[0]), content[r[0]], float(r[1])) for r in rows if r[0] in content]


def _word_cosine(a: str, b: str) -> float:
    wa, wb = set(_terms(a)), set(_terms(b))
    return len(wa & wb) / float(np.sqrt(len(wa) * len(wb))) if wa and wb else 0.0


# ------------------------------------------------------------------ stemming
# The Porter (1980) stemmer, the algorithm behind FTS5's `porter` tokenizer, so the in-memory index
# conflates the same word forms the SQLite index does ("sorting", "sorted", "sorts" -> "sort").

_VOWELS = frozenset("aeiou")


def _cons(w: str, i: int) -> bool:
    c = w[i]
    if c in _VOWELS:
        return False
    if c == "y":
        return i == 0 or not _cons(w, i - 1)
    return True


def _measure(stem: str) -> int:
    m, prev_vowel = 0, False
    for i in range(len(stem)):
        v = not _cons(stem, i)
        if prev_vowel and not v:
            m += 1
        prev_vowel = v
    return m


def _has_vowel(stem: str) -> bool:
    return any(not _cons(stem, i) for i in range(len(stem)))


def _double_cons(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _cons(w, len(w) - 1)


def _cvc(w: str) -> bool:
    return (len(w) >= 3 and _cons(w, len(w) - 3) and not _cons(w, len(w) - 2) and _cons(w, len(w) - 1)
            and w[-1] not in "wxy")


_STEP2 = (("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("abli", "able"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
          ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
          ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"))
_STEP3 = (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""),
          ("ness", ""))
_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
          "ate", "iti", "ous", "ive", "ize")


def porter(w: str) -> str:
    if len(w) <= 2:
        return w
    # step 1a
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("ss"):
        pass
    elif w.endswith("s"):
        w = w[:-1]
    # step 1b
    again = False
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    elif w.endswith("ed") and _has_vowel(w[:-2]):
        w, again = w[:-2], True
    elif w.endswith("ing") and _has_vowel(w[:-3]):
        w, again = w[:-3], True
    if again:
        if w.endswith(("at", "bl", "iz")):
            w += "e"
        elif _double_cons(w) and w[-1] not in "lsz":
            w = w[:-1]
        elif _measure(w) == 1 and _cvc(w):
            w += "e"
    # step 1c
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    # step 2
    for suf, rep in _STEP2:
        if w.endswith(suf):
            if _measure(w[:-len(suf)]) > 0:
                w = w[:-len(suf)] + rep
            break
    # step 3
    for suf, rep in _STEP3:
        if w.endswith(suf):
            if _measure(w[:-len(suf)]) > 0:
                w = w[:-len(suf)] + rep
            break
    # step 4
    for suf in _STEP4:
        if w.endswith(suf):
            stem = w[:-len(suf)]
            if _measure(stem) > 1 and (suf != "ion" or stem.endswith(("s", "t"))):
                w = stem
            break
    else:
        if w.endswith("ion"):
            pass
    # step 5
    if w.endswith("e"):
        stem = w[:-1]
        m = _measure(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            w = stem
    if w.endswith("ll") and _measure(w) > 1:
        w = w[:-1]
    return w


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
    with _lex_lock:
        _lex.clear()


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


# ------------------------------------------------------------ in-memory BM25
#
# FTS5 scores every row a query term matches, which at 10,000+ bullets costs more than the rest of
# retrieval together. This index keeps each playbook's postings in numpy arrays (term -> slots, BM25
# term-frequency part), built once and cached by playbook version like the vectors; a new version
# re-reads only the bullets whose row changed. Any SQLAlchemy database works. FTS5 stays the path for
# a cold start of a large SQLite playbook (the index then builds in the background) and for dedup
# inside a write transaction (`lexical_candidates`), which must see its own uncommitted rows.

_TOKEN = re.compile(r"[^\W_]+")
_stems: dict[str, str] = {}
BM25_K1, BM25_B = 1.2, 0.75
SECTION_WEIGHT = 0.3  # a bullet's section name counts less than its text (as FTS5 bm25(1.0, 0.3) did)
SYNONYM_WEIGHT = 1.0  # synonyms weigh as the task's own words (0.4-0.8 measured worse on the tune half of the pairs)
COLD_BUILD_ROWS = 20_000  # larger playbooks build their index in the background; FTS5 answers meanwhile
_BULLET_TABLE = Bullet.__table__  # type: ignore[attr-defined]
_BULLET_COLS = [c.name for c in _BULLET_TABLE.columns]


def _new_bullet() -> Bullet:
    """An empty Bullet instance with its ORM state, as a query would make it (no __init__ validation)."""
    configure_mappers()
    return instrumentation.manager_of_class(Bullet).new_instance()  # type: ignore[union-attr,no-any-return]


def _stem(word: str) -> str:
    s = _stems.get(word)
    if s is None:
        s = porter(word) if word.isascii() and word.isalpha() else word
        if len(_stems) > 200_000:
            _stems.clear()
        _stems[word] = s
    return s


def _doc_tokens(text_: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text_.lower()) if t not in _STOP]


def query_terms(query: str, synonyms: bool = True) -> dict[str, float]:
    """Stemmed query terms -> weight: the query's own words 1.0, their programming synonyms less."""
    own = [t for t in dict.fromkeys(_TOKEN.findall(query.lower())) if len(t) > 1 and t not in _STOP]
    out: dict[str, float] = {}
    for t in own:
        out[_stem(t)] = 1.0
    if synonyms:
        for t in expand_terms(own):
            for part in _TOKEN.findall(t):
                out.setdefault(_stem(part), SYNONYM_WEIGHT)
    return out


class _LexIndex:
    """One playbook's BM25 postings. Bullets occupy slots; a changed bullet gets a fresh slot and its
    old one dies, so postings only ever grow until the next full rebuild (when a fifth is stale)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = -1
        self.sig: dict[int, tuple] = {}  # pk -> row signature (status, counters, updated_at, section, length)
        self.slot_of: dict[int, int] = {}  # pk -> live slot
        self.pks = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.dl = np.zeros(0, np.float32)
        self.helpful = np.zeros(0, np.int64)
        self.harmful = np.zeros(0, np.int64)
        self.neutral = np.zeros(0, np.int64)
        self.episode: list[Optional[str]] = []
        self.avgdl = 1.0
        self.base_terms: dict[str, int] = {}  # term -> row of indptr
        self.indptr = np.zeros(1, np.int64)
        self.post_slot = np.zeros(0, np.int32)
        self.post_tf = np.zeros(0, np.float32)  # raw (field-weighted) term frequency
        self.extra: dict[str, tuple[list[int], list[float]]] = {}  # postings of slots added since the build
        self.extra_n = 0
        self.df_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term -> (slots, BM25 tf part)
        self._fallback_order: Optional[np.ndarray] = None
        self.bullets: dict[int, Bullet] = {}  # pk -> detached Bullet at this version, filled as results need them

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    # -- building
    def _grow(self, n: int) -> None:
        self.pks = np.concatenate([self.pks, np.zeros(n, np.int64)])
        self.alive = np.concatenate([self.alive, np.zeros(n, bool)])
        self.dl = np.concatenate([self.dl, np.zeros(n, np.float32)])
        for name in ("helpful", "harmful", "neutral"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(n, np.int64)]))
        self.episode.extend([None] * n)

    @staticmethod
    def _doc(section: str, content: str) -> tuple[dict[str, float], float]:
        tf: dict[str, float] = {}
        words = _doc_tokens(content)
        for t in words:
            tf[t] = tf.get(t, 0.0) + 1.0
        sec = _doc_tokens(section.replace("_", " "))
        for t in sec:
            tf[t] = tf.get(t, 0.0) + SECTION_WEIGHT
        return tf, len(words) + SECTION_WEIGHT * len(sec)

    def build(self, rows: list, version: int) -> None:
        """rows: (pk, status, helpful, harmful, neutral, updated_at, section, length, episode, content)."""
        lock = self.lock
        self.__init__()  # type: ignore[misc]
        self.lock = lock
        active = [r for r in rows if r[1] == "active"]
        self.sig = {int(r[0]): tuple(r[1:8]) for r in rows}
        self._grow(len(active))
        term_ids: dict[str, int] = {}
        t_col: list[int] = []
        s_col: list[int] = []
        f_col: list[float] = []
        for slot, r in enumerate(active):
            tf, dl = self._doc(r[6] or "", r[9] or "")
            self._set_slot(slot, r, dl)
            for t, f in tf.items():
                tid = term_ids.setdefault(t, len(term_ids))
                t_col.append(tid)
                s_col.append(slot)
                f_col.append(f)
        terms = np.array(t_col, np.int64)
        order = np.argsort(terms, kind="stable")
        self.post_slot = np.array(s_col, np.int32)[order]
        self.post_tf = np.array(f_col, np.float32)[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(terms, minlength=len(term_ids)))]).astype(np.int64)
        self.base_terms = term_ids
        self.avgdl = float(self.dl.mean()) if len(active) and self.dl.mean() > 0 else 1.0
        self.version = version

    def _set_slot(self, slot: int, r, dl: float) -> None:  # type: ignore[no-untyped-def]
        pk = int(r[0])
        self.pks[slot], self.alive[slot], self.dl[slot] = pk, True, dl
        self.helpful[slot], self.harmful[slot], self.neutral[slot] = int(r[2] or 0), int(r[3] or 0), int(r[4] or 0)
        self.episode[slot] = r[8]
        self.slot_of[pk] = slot

    def apply_changes(self, rows: list, version: int, bullets: Sequence[Bullet] = ()) -> None:
        """Changed rows (same shape as build's): their old slots die, active ones get new slots.
        `bullets`: those rows' bullets as committed, for the per-version cache."""
        for r in rows:
            pk = int(r[0])
            self.sig[pk] = tuple(r[1:8])
            self.bullets.pop(pk, None)
            old = self.slot_of.pop(pk, None)
            if old is not None:
                self.alive[old] = False
        active = [r for r in rows if r[1] == "active"]
        start = len(self.pks)
        self._grow(len(active))
        for i, r in enumerate(active):
            slot = start + i
            tf, dl = self._doc(r[6] or "", r[9] or "")
            self._set_slot(slot, r, dl)
            for t, f in tf.items():
                sl, fl = self.extra.setdefault(t, ([], []))
                sl.append(slot)
                fl.append(f)
                self.df_cache.pop(t, None)
                self.extra_n += 1
        self.df_cache.clear()  # cached postings still hold the slots that just died
        self.version = version
        self._fallback_order = None
        for b in bullets:
            if b.status == "active" and b.pk is not None:
                self.bullets[int(b.pk)] = b

    def stale(self) -> bool:
        dead = len(self.pks) - self.n_alive
        return dead > 0.2 * max(1, len(self.pks)) or self.extra_n > 0.2 * max(1, len(self.post_slot))

    # -- scoring
    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self.df_cache.get(term)
        if hit is not None:
            return hit
        parts_s, parts_f = [], []
        tid = self.base_terms.get(term)
        if tid is not None:
            a, b = self.indptr[tid], self.indptr[tid + 1]
            parts_s.append(self.post_slot[a:b])
            parts_f.append(self.post_tf[a:b])
        if term in self.extra:
            parts_s.append(np.array(self.extra[term][0], np.int32))
            parts_f.append(np.array(self.extra[term][1], np.float32))
        if not parts_s:
            hit = (np.zeros(0, np.int32), np.zeros(0, np.float32))
        else:
            slots = np.concatenate(parts_s) if len(parts_s) > 1 else parts_s[0]
            tf = np.concatenate(parts_f) if len(parts_f) > 1 else parts_f[0]
            keep = self.alive[slots]
            slots, tf = slots[keep], tf[keep]
            norm = BM25_K1 * (1 - BM25_B + BM25_B * self.dl[slots] / self.avgdl)
            hit = (slots, (tf * (BM25_K1 + 1) / (tf + norm)).astype(np.float32))
        if len(self.df_cache) > 4096:
            self.df_cache.clear()
        self.df_cache[term] = hit
        return hit

    def score(self, terms: dict[str, float], limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, bm25 >= 0) of the best `limit` matching live bullets, best first."""
        memo = getattr(self, "_n_memo", None)  # the live count, per version and state of `alive`
        if memo is not None and memo[0] == self.version and memo[1] is self.alive:
            n = memo[2]
        else:
            n = self.n_alive
            self._n_memo = (self.version, self.alive, n)
        if not terms or n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        plist = []
        for t, w in terms.items():
            slots, part = self.postings(t)
            if len(slots):
                df = len(slots)
                idf = float(np.log(1.0 + (n - df + 0.5) / (df + 0.5)))
                plist.append((df, t, w * idf, slots, part))
        if n >= PRUNE_FROM_ROWS and plist:
            # terms in a tenth of a large playbook carry little weight but cost the most to score
            rare = [p for p in plist if p[0] <= COMMON_TERM_SHARE * n] or [min(plist, key=lambda p: p[0])]
            plist = sorted(rare, key=lambda p: -p[2])[:MAX_RANKED_TERMS]
        if not plist:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.zeros(len(self.pks), np.float32)
        for _, _, w, slots, part in plist:
            np.add.at(scores, slots, w * part)  # a term's slots are distinct: the same sums as scores[slots] += ...
        hit = np.flatnonzero(scores != 0)  # much faster on a bool array
        if len(hit) > limit:
            hit = hit[np.argpartition(-scores[hit], limit - 1)[:limit]]
        hit = hit[np.argsort(-scores[hit], kind="stable")]
        return hit, scores[hit]

    def fallback_order(self) -> np.ndarray:
        """Live slots by (helpful - harmful) desc, then pk: the best-rated bullets for the fill."""
        if self._fallback_order is None:
            live = np.flatnonzero(self.alive)
            net = self.helpful[live] - self.harmful[live]
            self._fallback_order = live[np.lexsort((self.pks[live], -net))]
        return self._fallback_order


_lex: "OrderedDict[tuple[str, str], _LexIndex]" = OrderedDict()
_lex_lock = threading.Lock()
_lex_building: set[tuple[str, str]] = set()
_META_SQL = ("SELECT pk, status, helpful, harmful, neutral, updated_at, section, length(content), source_episode_id "
             "FROM bullet WHERE playbook_id = :p")


def _full_rows(conn, playbook_id: str) -> list:  # type: ignore[no-untyped-def]
    return conn.execute(text(_META_SQL.replace("FROM", ", content FROM")), {"p": playbook_id}).all()


def _refresh(conn, idx: _LexIndex, playbook_id: str, version: int) -> None:  # type: ignore[no-untyped-def]
    """Bring the index to `version`, re-reading only the rows whose signature moved."""
    meta = conn.execute(text(_META_SQL), {"p": playbook_id}).all()
    changed = [int(r[0]) for r in meta if idx.sig.get(int(r[0])) != tuple(r[1:8])]
    if len(meta) < len(idx.sig) or len(changed) > 0.2 * max(1, len(meta)) or idx.stale():
        idx.build(_full_rows(conn, playbook_id), version)
        return
    rows = []
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
                idx = _LexIndex()
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


def _lex_get(key: tuple[str, str]) -> Optional[_LexIndex]:
    """The cached index of (database url, playbook), marked as recently used."""
    with _lex_lock:
        idx = _lex.get(key)
        if idx is not None:
            _lex.move_to_end(key)
    return idx


def _store_lex(key: tuple[str, str], idx: _LexIndex) -> None:
    with _lex_lock:
        _lex[key] = idx
        _lex.move_to_end(key)
        while len(_lex) > CACHE_PLAYBOOKS:
            _lex.popitem(last=False)


def _detached(values: Sequence[Any]) -> Bullet:
    """A detached Bullet from its column values in table order, as a query would build it
    (no ORM loading, nothing for a session to track)."""
    b = _new_bullet()
    b.__dict__.update(zip(_BULLET_COLS, values))
    make_transient_to_detached(b)
    return b


def bullets_where(conn, *criteria: Any) -> list[Bullet]:  # type: ignore[no-untyped-def]
    """Bullets matching Core `criteria`, detached; each column still goes through its type."""
    return [_detached(r) for r in conn.execute(select(_BULLET_TABLE).where(*criteria))]


def detached_copy(b: Bullet) -> Bullet:
    """A detached copy of `b`'s column values: safe to share in a cache."""
    return _detached([getattr(b, name) for name in _BULLET_COLS])


def index_committed(url: str, playbook_id: str, old_version: int, new_version: int,
                    bullets: Sequence[Bullet]) -> None:
    """Bring this process's index from `old_version` to `new_version` with the bullets a write just
    committed (copies nobody changes), so the next query neither scans the playbook for them nor
    reads them back. Any other state (another writer got there first, no index yet) is left to `_refresh`."""
    idx = _lex_get((url, playbook_id))
    if idx is None:
        return
    stamp = stored_form(_BULLET_TABLE.c.updated_at, get_engine(url).dialect)  # as `_refresh` reads it
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
                  wait: bool = False) -> Optional[_LexIndex]:
    """The playbook's in-memory BM25 index at `version`; None while a large one is still building
    (the caller then uses FTS5). `wait=True` builds it here, whatever its size."""
    url = str(session.get_bind().url)  # type: ignore[union-attr]
    key = (url, playbook_id)
    idx = _lex_get(key)
    conn = session.connection()
    if idx is None:
        if not wait and is_sqlite(session.get_bind()):  # type: ignore[arg-type]
            n = conn.execute(text("SELECT count(*) FROM bullet WHERE playbook_id = :p"), {"p": playbook_id}).scalar()
            if int(n or 0) > COLD_BUILD_ROWS:
                _build_in_background(url, playbook_id)
                return None
        with _build_lock(key):
            idx = _lex_get(key)  # built by whoever held the lock before us
            if idx is None:
                idx = _LexIndex()
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
        from core.llm.client import LLMClient

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


def _bullets_by_pk(conn, pks: Sequence[int], idx: Optional[_LexIndex] = None,  # type: ignore[no-untyped-def]
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
             bullets_where(conn, _BULLET_TABLE.c.pk.in_(missing), _BULLET_TABLE.c.status == "active")}
    if use_cache:
        with idx.lock:  # type: ignore[union-attr]
            if idx.version == version:  # type: ignore[union-attr]
                idx.bullets.update(fresh)  # type: ignore[union-attr]
    out.update(fresh)
    return out


@dataclass
class _LexCols:
    """Lexical candidates as columns: pk, bm25 >= 0, counters and source episode."""

    pks: np.ndarray  # int64
    bm25: np.ndarray  # float64
    helpful: np.ndarray  # int64
    harmful: np.ndarray
    neutral: np.ndarray
    episodes: list[Optional[str]]

    @classmethod
    def of_index(cls, idx: "_LexIndex", slots: np.ndarray, bm25: np.ndarray) -> "_LexCols":
        return cls(idx.pks[slots], bm25.astype(np.float64), idx.helpful[slots], idx.harmful[slots],
                   idx.neutral[slots], [idx.episode[i] for i in slots.tolist()])

    @classmethod
    def of_rows(cls, rows: Sequence) -> "_LexCols":
        return cls(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64),
                   np.array([r[2] for r in rows], np.int64), np.array([r[3] for r in rows], np.int64),
                   np.array([r[4] for r in rows], np.int64), [r[5] for r in rows])

    def rows(self) -> list[tuple]:
        return list(zip(self.pks.tolist(), self.bm25.tolist(), self.helpful.tolist(), self.harmful.tolist(),
                        self.neutral.tolist(), self.episodes))


def _rank_plain(c: _LexCols, q_text: str, tasks: dict[str, str], k: int,
                weights: RankWeights) -> list[tuple[int, tuple[float, dict[str, float]]]]:
    """The top k lexical candidates as (pk, (fused score, per-signal scores)), best first, ties by pk.

    The same IEEE operations in the same order as scoring one candidate at a time
    (`counter_score`, bm25 / (bm25 + saturation), the weighted sum), so the
    scores are identical to the last bit; only the k kept get their dicts.
    """
    if not len(c.pks):
        return []
    lex = c.bm25 / (c.bm25 + LEXICAL_SATURATION)
    cnt = (c.helpful - c.harmful) / (c.helpful + c.harmful + c.neutral + 2)
    prov = np.zeros(len(c.pks), np.float64)
    if tasks:
        for i, episode in enumerate(c.episodes):
            if episode in tasks:
                prov[i] = _word_cosine(q_text, tasks[episode])
    fused = weights.lexical * lex + weights.counters * cnt + weights.provenance * prov
    order = np.lexsort((c.pks, -fused))[:k].tolist()
    pks, fs, ls, cs, ps = c.pks.tolist(), fused.tolist(), lex.tolist(), cnt.tolist(), prov.tolist()
    return [(pks[i], (fs[i], {"semantic": 0.0, "lexical": ls[i], "counters": cs[i], "provenance": ps[i]}))
            for i in order]


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
    bullet to return is in its per-version cache. The ranking is `_rank_plain`,
    as on the Session path.
    """
    engine = get_engine()
    if not is_sqlite(engine):
        return None
    key = (str(engine.url), playbook_id)
    idx = _lex_get(key)
    if idx is None:
        return None
    raw = thread_reader(engine)
    row = run_raw(raw, _VERSION_RAW, (playbook_id,)).fetchone()
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
        cols = _LexCols.of_index(idx, *idx.score(terms, max(50, 5 * k)))
    finally:
        idx.lock.release()
    tasks: dict[str, str] = {}
    if weights.provenance:
        ids = sorted({e for e in cols.episodes if e})
        if ids:
            tasks = dict(run_raw(raw, f"SELECT id, task FROM episode WHERE id IN ({','.join('?' * len(ids))})",
                                 ids).fetchall())
    best = _rank_plain(cols, q_text, tasks, k, weights)
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
                lex = _LexCols.of_index(lex_idx, *lex_idx.score(query_terms(q_text, synonyms), limit)).rows()
        else:
            lex = [tuple(r) for r in _lexical_rows(s, playbook_id, q_text, limit, synonyms=synonyms)]
        scored: dict[int, tuple[float, dict[str, float]]] = {}
        if qvec is not None and emb is not None:
            lex_norm = {int(r[0]): r[1] / (r[1] + LEXICAL_SATURATION) for r in lex}
            scored = _dense(vector_index(s, playbook_id, emb.name), qvec, lex_norm, k, weights)
        if scored:
            # lexical hits without a vector (not embedded yet) still compete
            plain = [r for r in lex if int(r[0]) not in scored]
            tasks = _provenance_texts(s, [r[5] for r in plain]) if weights.provenance else {}
            for pk, _, helpful, harmful, neutral, episode in plain:
                prov = _word_cosine(q_text, tasks[episode]) if episode in tasks else 0.0
                cnt = counter_score(helpful, harmful, neutral)
                sc = {"semantic": 0.0, "lexical": lex_norm[pk], "counters": cnt, "provenance": prov}
                scored[pk] = (weights.lexical * sc["lexical"] + weights.counters * cnt + weights.provenance * prov, sc)
            best = sorted(scored.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        else:  # lexical only: the same ranking as the loop above, on arrays
            tasks = _provenance_texts(s, [r[5] for r in lex]) if weights.provenance else {}
            best = _rank_plain(_LexCols.of_rows(lex), q_text, tasks, k, weights)
        if lex_idx is not None:
            return _hits(conn, lex_idx, int(version), best, k, weights)
        bullets = _bullets_by_pk(conn, [pk for pk, _ in best])
        out = [Retrieved(bullets[pk], sc, d) for pk, (sc, d) in best if pk in bullets]
        if len(out) < k:
            out += _fallback(s, playbook_id, {r.bullet.pk for r in out}, k - len(out), weights)
    return out


def _hits(conn, idx: _LexIndex, version: int, best: list, k: int,  # type: ignore[no-untyped-def]
          weights: RankWeights) -> list[Retrieved]:
    """A ranking's bullets (from the index's cache, or read and cached), then best-rated others up to k."""
    bullets = _bullets_by_pk(conn, [pk for pk, _ in best], idx, version)
    out = [Retrieved(bullets[pk], sc, d) for pk, (sc, d) in best if pk in bullets]
    if len(out) < k:
        out += _fallback_fast(conn, idx, version, {r.bullet.pk for r in out}, k - len(out), weights)
    return out


def _fallback_fast(conn, idx: _LexIndex, version: int, seen: set[Optional[int]], n: int,  # type: ignore[no-untyped-def]
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


_blas_limited = False
_split_pool: Optional[ThreadPoolExecutor] = None
SPLIT_FROM_ROWS = 40_000  # larger matrices are scanned in two halves on two threads


def _single_thread_blas() -> None:
    """Run numpy's own BLAS on one thread, once per process.

    A query's matrix-vector product is small; OpenBLAS waking a second thread
    for it costs more than it saves whenever the other core is busy (measured
    here with one core loaded: 10,000 x 384 p50 11.8 ms threaded, 1.5 ms on one
    thread), and a service has concurrent requests to fill the cores anyway.
    Only numpy's bundled library is limited, never torch's.
    """
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        np_dir = os.path.dirname(os.path.dirname(np.__file__))
        for lib in ctl.lib_controllers:
            if lib.internal_api == "openblas" and lib.filepath.startswith(np_dir) and "numpy" in lib.filepath:
                lib.set_num_threads(1)
    except Exception as exc:  # threadpoolctl missing or unusual BLAS: keep its defaults
        log.debug("BLAS threads left as they are: %s", exc)


def _matvec(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """m @ q on one BLAS thread, split across two Python threads for large matrices (BLAS drops the GIL)."""
    global _split_pool
    _single_thread_blas()
    n = m.shape[0]
    if n < SPLIT_FROM_ROWS:
        return m @ q
    if _split_pool is None:
        _split_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ace-matvec")
    out = np.empty(n, np.float32)
    half = n // 2
    fut = _split_pool.submit(np.dot, m[half:], q, out[half:])
    np.dot(m[:half], q, out[:half])
    fut.result()
    return out


def _dense(idx: _Index, qvec: np.ndarray, lex_norm: dict[int, float], k: int,
           weights: RankWeights) -> dict[int, tuple[float, dict[str, float]]]:
    """Fused scores over every embedded bullet (numpy brute force); the top k of them."""
    if not len(idx.pks) or idx.matrix.shape[1] != qvec.shape[0] or idx.active is None or idx.counters is None:
        return {}
    sem = _matvec(idx.matrix, np.ascontiguousarray(qvec, dtype=np.float32))
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
