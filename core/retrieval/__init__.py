"""Finding the bullets that fit a task: lexical (FTS5 and in-memory BM25), vectors, and their blend."""

from core.retrieval.dedup import semantic_near_duplicate, similar_pairs
from core.retrieval.expansion import expand_query
from core.retrieval.fts import lexical_candidates
from core.retrieval.hybrid import NotCached, cached_only, clear_cache, search
from core.retrieval.lexical import index_committed, lexical_index, warm
from core.retrieval.ranking import RankWeights, Retrieved, counter_score
from core.retrieval.rows import bullets_where, detached_copy
from core.retrieval.stemmer import porter
from core.retrieval.text import fts_query, query_terms

__all__ = ["RankWeights", "Retrieved", "search", "lexical_candidates", "fts_query", "expand_query", "query_terms",
           "lexical_index", "warm", "porter", "cached_only", "NotCached",
           "semantic_near_duplicate", "similar_pairs", "clear_cache", "counter_score", "index_committed",
           "detached_copy", "bullets_where"]
