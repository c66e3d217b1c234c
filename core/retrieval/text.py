"""Words of queries and bullets, shared by both lexical paths (SQLite FTS5 and the in-memory BM25).

Tasks rarely use the words of the strategy that would save them, so a query
also carries programming synonyms of its words. FTS5 gets them as an OR-query;
the in-memory index gets Porter stems, as FTS5's tokenizer makes them, so the
two paths match the same bullets.
"""

import re
from collections.abc import Sequence

import numpy as np

from core.retrieval.stemmer import porter

_WORD = re.compile(r"[a-z0-9_]+")
_TOKEN = re.compile(r"[^\W_]+")
_STOP = frozenset("a an and are as at be by for from has have how i if in into is it its of on or that the this "
                  "to was were what when which will with you your write function return returns given use using "
                  "should can do does my me we our so but not no than then there these those one get got".split())
SYNONYM_WEIGHT = 1.0  # synonyms weigh as the task's own words (0.4-0.8 measured worse on the tune half of the pairs)

# Query pruning, the same for FTS5 and the in-memory index: at 10,000+ bullets, scoring every row a
# common term matches is what makes a query slow, and BM25 gives such terms almost no weight.
COMMON_TERM_SHARE = 0.1  # terms in more of the index than this are dropped from large queries
PRUNE_FROM_ROWS = 2000
MAX_RANKED_TERMS = 10  # the rarest terms carry nearly all of BM25's weight

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


def tsquery_text(query: str, max_terms: int = 64, synonyms: bool = True) -> str:
    """The same OR-query for PostgreSQL's `to_tsquery`: plain words joined by `|` (it stems them itself)."""
    words = fts_query(query, max_terms, synonyms).replace('"', "").split(" OR ")
    parts = dict.fromkeys(p for w in words for p in _TOKEN.findall(w))
    return " | ".join(parts)


def word_cosine(a: str, b: str) -> float:
    """Word overlap of two texts: the provenance signal when there are no vectors."""
    wa, wb = set(_terms(a)), set(_terms(b))
    return len(wa & wb) / float(np.sqrt(len(wa) * len(wb))) if wa and wb else 0.0


_stems: dict[str, str] = {}


def _stem(word: str) -> str:
    s = _stems.get(word)
    if s is None:
        s = porter(word) if word.isascii() and word.isalpha() else word
        if len(_stems) > 200_000:
            _stems.clear()
        _stems[word] = s
    return s


def doc_tokens(text_: str) -> list[str]:
    """A bullet's stemmed words, as the in-memory index counts them (stop words dropped, like queries)."""
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
