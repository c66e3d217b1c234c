"""Vector search: numpy brute force over a per-playbook matrix cached in memory.

A matrix is reloaded only when the playbook's stored vectors change; counters
and status, which change with every version, are re-read alone. A query is one
matrix-vector product, so how BLAS uses threads decides its speed.
"""

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sqlalchemy import Connection, text
from sqlmodel import Session

from core.retrieval.ranking import RankWeights

log = logging.getLogger(__name__)


@dataclass
class VectorIndex:
    """One playbook's vectors under one model, aligned by bullet pk (sorted)."""

    stamp: tuple[int, int]
    pks: np.ndarray  # int64, sorted
    matrix: np.ndarray  # (n, d) float32, unit rows
    task_rows: np.ndarray  # indices into pks of bullets with a provenance vector
    task_matrix: np.ndarray  # (len(task_rows), d)
    version: int = -1
    active: Optional[np.ndarray] = None  # bool (n,)
    counters: Optional[np.ndarray] = None  # float32 (n,)


_cache: "OrderedDict[tuple[str, str, str], VectorIndex]" = OrderedDict()
_cache_lock = threading.Lock()
CACHE_PLAYBOOKS = 8  # playbooks whose vectors stay in memory


def clear_vectors() -> None:
    """Forget every cached matrix (tests, benchmarks): the next query reloads from the database."""
    with _cache_lock:
        _cache.clear()


def _stamp(conn: Connection, playbook_id: str, model: str) -> tuple[int, int]:
    version = conn.execute(text("SELECT current_version FROM playbook WHERE id = :p"), {"p": playbook_id}).scalar()
    eid = conn.execute(text("SELECT max(eid) FROM bulletembedding WHERE playbook_id = :p AND model = :m"),
                       {"p": playbook_id, "m": model}).scalar()
    return int(version or 0), int(eid or 0)


def _load_vectors(conn: Connection, playbook_id: str, model: str, stamp: tuple[int, int]) -> VectorIndex:
    rows = conn.execute(text("SELECT bullet_pk, vector, task_vector FROM bulletembedding "
                             "WHERE playbook_id = :p AND model = :m ORDER BY bullet_pk"),
                        {"p": playbook_id, "m": model}).all()
    if not rows:
        return VectorIndex(stamp, np.zeros(0, np.int64), np.zeros((0, 1), np.float32), np.zeros(0, np.int64),
                      np.zeros((0, 1), np.float32))
    dims = len(rows[0][1]) // 4
    rows = [r for r in rows if len(r[1]) == dims * 4]
    pks = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dims).astype(np.float32)
    with_task = [(i, r[2]) for i, r in enumerate(rows) if r[2] is not None and len(r[2]) == dims * 4]
    task_rows = np.array([i for i, _ in with_task], dtype=np.int64)
    task_matrix = (np.frombuffer(b"".join(t for _, t in with_task), dtype="<f4").reshape(len(with_task), dims)
                   .astype(np.float32) if with_task else np.zeros((0, dims), np.float32))
    return VectorIndex(stamp, pks, matrix, task_rows, task_matrix)


def _load_meta(conn: Connection, idx: VectorIndex, playbook_id: str, version: int) -> None:
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


def vector_index(session: Session, playbook_id: str, model: str) -> VectorIndex:
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
        idx = VectorIndex(stamp, idx.pks, idx.matrix, idx.task_rows, idx.task_matrix)
        _load_meta(conn, idx, playbook_id, stamp[0])
    with _cache_lock:
        _cache[key] = idx
        while len(_cache) > CACHE_PLAYBOOKS:
            _cache.popitem(last=False)
    return idx


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


def dense_scores(idx: VectorIndex, qvec: np.ndarray, lex_norm: dict[int, float], k: int,
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
    return {int(idx.pks[i]): (float(fused[i]), {"semantic": float(sem[i]),
                                                "lexical": lex_norm.get(int(idx.pks[i]), 0.0),
                                                "counters": float(idx.counters[i]), "provenance": float(prov[i])})
            for i in best}
