"""How retrieval fuses its signals (semantic, lexical, counters, provenance) into one score.

Every signal stays visible per result (`Retrieved.scores`) and the weights are a
setting (ACE_RANK_WEIGHTS), so a person can see why a bullet was chosen and
change the blend.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np

from core.config import Settings, get_settings
from core.retrieval.bm25 import BM25Index
from core.retrieval.text import word_cosine
from core.storage.models import Bullet

LEXICAL_SATURATION = 10.0  # FTS5 bm25 units; measured on data/retrieval_pairs.jsonl (bench/bench_retrieval.py)


@dataclass(frozen=True)
class RankWeights:
    """How retrieval blends its signals; shown to users beside each result.

    semantic: cosine of query and bullet vectors; lexical: BM25 squashed to
    [0, 1) as bm25 / (bm25 + 10), so a weak best match stays weak; counters:
    (helpful - harmful) / (total + 2); provenance: similarity of the query to
    the task the bullet was learned from.
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
        """The blend the deployment chose (ACE_RANK_WEIGHTS)."""
        return cls.parse((settings or get_settings()).rank_weights)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Retrieved:
    """A chosen bullet with its fused score and each signal's, so a person can see why it was chosen."""

    bullet: Bullet
    score: float
    scores: dict[str, float]  # per signal, before weighting; "fallback": 1.0 when not matched at all


def counter_score(helpful: int, harmful: int, neutral: int) -> float:
    """Net helpfulness in (-1, 1), damped (+2) so one vote on a new bullet does not dominate."""
    return (helpful - harmful) / (helpful + harmful + neutral + 2)


@dataclass
class LexicalColumns:
    """Lexical candidates as columns: pk, bm25 >= 0, counters and source episode."""

    pks: np.ndarray  # int64
    bm25: np.ndarray  # float64
    helpful: np.ndarray  # int64
    harmful: np.ndarray
    neutral: np.ndarray
    episodes: list[Optional[str]]

    @classmethod
    def of_index(cls, idx: BM25Index, slots: np.ndarray, bm25: np.ndarray) -> "LexicalColumns":
        return cls(idx.pks[slots], bm25.astype(np.float64), idx.helpful[slots], idx.harmful[slots],
                   idx.neutral[slots], [idx.episode[i] for i in slots.tolist()])

    @classmethod
    def of_rows(cls, rows: Sequence) -> "LexicalColumns":
        return cls(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64),
                   np.array([r[2] for r in rows], np.int64), np.array([r[3] for r in rows], np.int64),
                   np.array([r[4] for r in rows], np.int64), [r[5] for r in rows])

    def rows(self) -> list[tuple]:
        return list(zip(self.pks.tolist(), self.bm25.tolist(), self.helpful.tolist(), self.harmful.tolist(),
                        self.neutral.tolist(), self.episodes))


def rank_lexical(c: LexicalColumns, q_text: str, tasks: dict[str, str], k: int,
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
                prov[i] = word_cosine(q_text, tasks[episode])
    fused = weights.lexical * lex + weights.counters * cnt + weights.provenance * prov
    order = np.lexsort((c.pks, -fused))[:k].tolist()
    pks, fs, ls, cs, ps = c.pks.tolist(), fused.tolist(), lex.tolist(), cnt.tolist(), prov.tolist()
    return [(pks[i], (fs[i], {"semantic": 0.0, "lexical": ls[i], "counters": cs[i], "provenance": ps[i]}))
            for i in order]
