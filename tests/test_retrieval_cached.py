"""The cached lexical path of `search` (index and bullets in memory, one raw version read) and the
service's in-loop embed_prompt: same ranking as the Session path, and a new version is seen at once."""

import random

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from core import playbook as P
from core import retrieval as R
from core.retrieval import bm25, lexical
from core.service.app import create_app
from core.storage.db import read_session, write_session
from core.storage.models import Bullet, Episode
from tests.support import SQLITE_ONLY

VOCAB = ("parse cache retry index buffer stream socket thread lock queue vector matrix sort filter csv json "
         "float round empty list dict average mean crash error timeout regex unicode encode decode").split()
QUERIES = ["sort the csv rows by column", "average of an empty list crashes", "retry on timeout with backoff",
           "decode unicode json", "zzz qqq", "parse float and round it", "thread lock queue"]


# the event-loop path (no network read) exists only on SQLite
pytestmark = [pytest.mark.usefixtures("fresh_retrieval"), SQLITE_ONLY]


@pytest.fixture()
def playbook(db_url: str, settings_env) -> str:
    settings_env(ACE_EMBEDDER="none")
    P.get_or_create_playbook("demo")
    with write_session() as s:
        eps = []
        for task in ("sort a csv file by its second column", "average of readings that may be empty"):
            ep = Episode(playbook_id="demo", task=task, status="succeeded")
            s.add(ep)
            s.flush()
            eps.append(ep.id)
    rng = random.Random(5)
    for i in range(60):
        P.apply_delta("demo", [{"type": "ADD", "section": rng.choice(["strategies", "pitfalls"]),
                                "content": " ".join(rng.sample(VOCAB, 7)) + f" {i}"}],
                      episode_id=eps[i % 3] if i % 3 < 2 else None)
    for i in range(1, 60, 7):
        P.apply_delta("demo", [{"type": "TAG", "bullet_id": f"b-{i:05d}", "tag": "helpful" if i % 2 else "harmful"}])
    return "demo"


def flat(hits: list[R.Retrieved]) -> list[tuple]:
    return [(h.bullet.id, h.bullet.content, h.score, h.scores) for h in hits]


def test_cached_path_ranks_exactly_as_the_session_path(playbook: str) -> None:
    for q in QUERIES:
        for k in (1, 5, 20, 70):
            R.clear_cache()
            cold = P.retrieve(playbook, q, k)  # builds the index through a Session
            for _ in range(2):  # the first may still read bullets it has not cached
                assert flat(P.retrieve(playbook, q, k)) == flat(cold), (q, k)
            with R.cached_only():  # raises NotCached unless the cached path answers
                warm = P.retrieve(playbook, q, k)
            assert flat(warm) == flat(cold), (q, k)
    assert any(h.scores["provenance"] > 0 for h in P.retrieve(playbook, QUERIES[0], 5))
    assert [h.scores.get("fallback") for h in P.retrieve(playbook, "zzz qqq", 3)] == [1.0] * 3


def test_a_ranking_the_cache_made_is_not_scored_again(playbook: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the cached path ranks but lacks bullets to return, the Session path reads just those."""
    expected = {}
    for q in QUERIES:
        R.clear_cache()
        expected[q] = flat(P.retrieve(playbook, q, 20))
    R.clear_cache()
    P.retrieve(playbook, "zzz qqq", 1)  # builds the index, caches one bullet
    calls = []
    real = bm25.BM25Index.score
    monkeypatch.setattr(bm25.BM25Index, "score", lambda self, *a: calls.append(a) or real(self, *a))
    for q in QUERIES:
        calls.clear()
        assert flat(P.retrieve(playbook, q, 20)) == expected[q], q
        assert len(calls) == 1, q


def test_a_new_version_is_seen_by_the_next_query(playbook: str) -> None:
    q = "quasar nebula telescope"
    P.retrieve(playbook, q, 70)  # reads (and caches) every bullet
    P.apply_delta(playbook, [{"type": "ADD", "content": "Point the quasar nebula telescope north"},
                             {"type": "TAG", "bullet_id": "b-00002", "tag": "harmful"}])
    with R.cached_only():  # the write handed its rows to this process's index: nothing to read back
        hits = P.retrieve(playbook, q, 70)
    assert hits[0].bullet.content == "Point the quasar nebula telescope north"
    with read_session() as s:  # the cached copies hold every column exactly as stored
        stored = {b.pk: b.model_dump() for b in s.exec(select(Bullet).where(Bullet.playbook_id == playbook))}
    assert all(h.bullet.model_dump() == stored[h.bullet.pk] for h in hits)
    assert next(h.bullet.harmful for h in hits if h.bullet.id == "b-00002") == stored[2]["harmful"] == 1
    R.clear_cache()  # a cold index agrees (its BM25 length statistics differ a little, not the order)
    assert [h.bullet.id for h in P.retrieve(playbook, q, 3)] == [h.bullet.id for h in hits[:3]]
    P.apply_delta(playbook, [{"type": "REMOVE", "bullet_id": "b-00061"}])
    assert "b-00061" not in {h.bullet.id for h in P.retrieve(playbook, q, 70)}


def test_service_embed_prompt_sees_changes_made_elsewhere(playbook: str) -> None:
    with TestClient(create_app(start_worker=False)) as c:
        def ask() -> str:
            r = c.post(f"/playbooks/{playbook}/embed_prompt", json={"prompt": "quasar nebula telescope", "k": 3})
            assert r.status_code == 200, r.text
            return r.json()["prompt"]

        before = ask()
        assert ask() == before
        P.apply_delta(playbook, [{"type": "ADD", "content": "Point the quasar nebula telescope north"}])
        assert ":: Point the quasar nebula telescope north" in ask()
        assert ask().count("helpful=") == 3
        assert c.post(f"/playbooks/{playbook}/embed_prompt", json={"prompt": "x", "k": 0}).status_code == 200
        r = c.post("/playbooks/bad id!/embed_prompt", json={"prompt": "x"})
        assert r.status_code == 422 and "invalid playbook id" in r.json()["detail"][0]["msg"]
        assert c.post(f"/playbooks/{playbook}/embed_prompt", json={"prompt": "x", "k": -1}).status_code == 422
        new = c.post("/playbooks/fresh-one/embed_prompt", json={"prompt": "hello", "k": 5})
        assert new.status_code == 200 and new.json()["prompt"].startswith("hello")


def test_render_writes_bullet_lines_whether_loaded_or_expired(playbook: str) -> None:
    hits = P.retrieve(playbook, "sort the csv rows by column", 10)
    lines = P.render(None, [h.bullet for h in hits]).splitlines()
    assert all(P.bullet_line(h.bullet) in lines for h in hits)
    with read_session() as s:
        b = s.exec(select(Bullet).where(Bullet.playbook_id == playbook)).first()
        assert b is not None
        s.expire(b)  # its attributes are gone from the instance: render must load them
        assert P.render(None, [b]).splitlines() == [P.BEGIN_MARK, f"## {b.section}", P.bullet_line(b), P.END_MARK]


def test_cached_path_never_waits_for_a_busy_index(db_url: str) -> None:
    """The service runs this path on its event loop: a refresh holding the index lock in another
    thread must send it to the thread pool at once, not block every request behind it."""
    import time

    from core.storage.db import get_engine

    P.apply_delta("busy", [{"type": "ADD", "content": f"{w} strategy"} for w in VOCAB])
    P.retrieve("busy", "sort csv", 5)
    idx = lexical._lex[(str(get_engine().url), "busy")]
    with idx.lock:  # as a refresh in another thread would
        t0 = time.perf_counter()
        with pytest.raises(R.NotCached), R.cached_only():
            P.embed_prompt("busy", "sort csv", 5)
        assert time.perf_counter() - t0 < 1.0
    with R.cached_only():
        assert "strategy" in P.embed_prompt("busy", "sort csv", 5)
