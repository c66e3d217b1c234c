"""One playbook's BM25 postings in numpy arrays: the in-memory lexical index.

FTS5 scores every row a query term matches, which at 10,000+ bullets costs more
than the rest of retrieval together. These postings (term -> slots, the BM25
term-frequency part) are built once per playbook and then updated from only the
changed rows, so a query scores just the rare terms' postings. Any SQLAlchemy
database works.
"""

import threading
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from core.retrieval.text import COMMON_TERM_SHARE, MAX_RANKED_TERMS, PRUNE_FROM_ROWS, doc_tokens
from core.storage.models import Bullet

BM25_K1, BM25_B = 1.2, 0.75
SECTION_WEIGHT = 0.3  # a bullet's section name counts less than its text (as FTS5 bm25(1.0, 0.3) did)


class BM25Index:
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
        """Live bullets: BM25's document count."""
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
        words = doc_tokens(content)
        for t in words:
            tf[t] = tf.get(t, 0.0) + 1.0
        sec = doc_tokens(section.replace("_", " "))
        for t in sec:
            tf[t] = tf.get(t, 0.0) + SECTION_WEIGHT
        return tf, len(words) + SECTION_WEIGHT * len(sec)

    def build(self, rows: Sequence[Any], version: int) -> None:
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

    def _set_slot(self, slot: int, r: Sequence[Any], dl: float) -> None:
        pk = int(r[0])
        self.pks[slot], self.alive[slot], self.dl[slot] = pk, True, dl
        self.helpful[slot], self.harmful[slot], self.neutral[slot] = int(r[2] or 0), int(r[3] or 0), int(r[4] or 0)
        self.episode[slot] = r[8]
        self.slot_of[pk] = slot

    def apply_changes(self, rows: Sequence[Any], version: int, bullets: Sequence[Bullet] = ()) -> None:
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
        """A fifth of the slots dead or added since the build: time for a full rebuild."""
        dead = len(self.pks) - self.n_alive
        return dead > 0.2 * max(1, len(self.pks)) or self.extra_n > 0.2 * max(1, len(self.post_slot))

    # -- scoring
    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """A term's live (slots, BM25 tf part), cached until the next change."""
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
