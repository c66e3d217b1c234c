"""Bullets that mean nearly the same, by vector cosine: dedup on write and MERGE suggestions.

Lexical overlap misses rewordings of one strategy; these need an embedder and
find nothing without one.
"""

from collections.abc import Sequence
from typing import Optional

import numpy as np
from sqlalchemy import text
from sqlmodel import Session

from core.config import get_settings
from core.retrieval.embeddings import Embedder, embed_query, get_embedder
from core.retrieval.vectors import vector_index
from core.storage.db import read_session
from core.storage.models import Bullet


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
        ids: dict[int, str] = dict(s.connection().execute(text("SELECT pk, id FROM bullet WHERE playbook_id = :p"),
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
