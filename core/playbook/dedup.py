"""Near duplicates: an ADD that repeats a bullet becomes a helpful TAG on it instead."""

import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Optional

from rapidfuzz import fuzz
from sqlmodel import Session

from core.config import get_settings
from core.retrieval import lexical_candidates, semantic_near_duplicate
from core.storage.models import Bullet, Playbook

_WORD = re.compile(r"[a-z0-9_]+")


def _words(text_: str) -> set[str]:
    return set(_WORD.findall(text_.lower()))


def similarity(a: str, b: str, need: float = 0.0) -> float:
    """Lexical near-duplicate score in [0, 1]: the larger of word-set Jaccard and
    character-sequence similarity, so both reworded and lightly edited copies score high.
    With `need`, it stops early once it cannot reach that score.

    The character score is rapidfuzz's normalised Indel similarity (2 * LCS / total length),
    bit-parallel C++: ~100x faster than difflib on bullet-sized texts."""
    wa, wb = _words(a), _words(b)
    jac = len(wa & wb) / len(wa | wb) if wa and wb else 0.0
    if jac >= need > 0:
        return jac
    return max(jac, fuzz.ratio(a.lower(), b.lower(), score_cutoff=need * 100) / 100)


DEDUP_CANDIDATES = 5  # a near-copy shares nearly all of its words, so BM25 ranks it among the first few


def near_duplicate(session: Session, pb: Playbook, content: str, threshold: float,
                   local: Sequence[Bullet] = (), changed: AbstractSet[int] = frozenset()
                   ) -> Optional[tuple[Bullet | int, float]]:
    """The bullet an ADD repeats (an object from `local`, else its pk): by meaning when embeddings
    are on, else by wording.

    `local`: bullets as this delta left them so far (compared by their current text); `changed`:
    pks this delta touched, whose committed state the indexes still show and so are skipped there.
    """
    semantic = semantic_near_duplicate(session, pb.id, content, get_settings().semantic_dedup_threshold)
    if semantic is not None and semantic[0].pk not in changed:
        return int(semantic[0].pk), semantic[1]  # type: ignore[arg-type]
    best: Optional[tuple[Bullet | int, float]] = None
    candidates: list[tuple[Bullet | int, str]] = [(b, b.content) for b in local]
    candidates += [(pk, text_) for pk, text_, _ in
                   lexical_candidates(session, pb.id, content, DEDUP_CANDIDATES, synonyms=False,
                                      version=pb.current_version)
                   if pk not in changed]
    for ref, text_ in candidates:
        score = similarity(content, text_, threshold)
        if score >= threshold and (best is None or score > best[1]):
            best = (ref, score)
    return best
