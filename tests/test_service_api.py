"""The ACE service API through httpx against the app: reference envelopes, our additions, bad input."""

import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import playbook as P
from core.playbook import versions as V
from core.service.app import create_app
from tests.support import SQLITE_ONLY

PLAYBOOK_KEYS = {"id", "name", "description", "created_at", "modified_at"}
BULLET_KEYS = {"id", "playbook_id", "content", "metadata", "created_at", "modified_at"}
META = {"helpful_count", "harmful_count", "neutral_count"}


WORDS = ("apple banana cherry damson elder fig grape hazel iris juniper kiwi lemon mango nectar olive peach quince "
         "raisin sloe tamarind ugli vanilla walnut xigua yam zest almond basil caper dill").split()


VOCAB = ("parse cache retry index buffer stream socket thread lock queue vector matrix tensor batch epoch loss "
         "gradient schema column table join merge split token regex decode encode hash sort filter reduce map "
         "yield await spawn fork pipe signal timeout budget").split()


def err(r: Any) -> str:
    """The messages of an error response (every error has one shape: `{"detail": [{loc, msg, type}]}`)."""
    return "; ".join(e["msg"] for e in r.json()["detail"])


NOT_FOUND = {"detail": [{"loc": ["path", "bullet_id"], "msg": "Bullet not found", "type": "not_found"}]}


def add(c: TestClient, pid: str, content: str, section: str | None = None) -> dict[str, Any]:
    r = c.post(f"/playbooks/{pid}/bullets", json={"content": content, **({"section": section} if section else {})})
    assert r.status_code == 201, r.text
    return r.json()["bullet"]


# ------------------------------------------------------------- reference API


def test_playbook_crud_envelopes(client: TestClient) -> None:
    assert client.get("/playbooks").json() == {"playbooks": []}
    r = client.post("/playbooks", json={"name": "Math agent", "description": "word problems"})
    assert r.status_code == 201
    pb = r.json()["playbook"]
    assert PLAYBOOK_KEYS <= set(pb) and pb["name"] == "Math agent" and pb["description"] == "word problems"
    assert len(pb["id"]) == 36  # a UUID, like the reference
    assert client.get(f"/playbooks/{pb['id']}").json()["playbook"]["name"] == "Math agent"
    r = client.patch(f"/playbooks/{pb['id']}", json={"description": "arithmetic"})
    assert r.status_code == 200 and r.json()["playbook"]["description"] == "arithmetic"
    assert r.json()["playbook"]["name"] == "Math agent"
    assert [p["id"] for p in client.get("/playbooks").json()["playbooks"]] == [pb["id"]]


def test_routes_create_missing_playbooks(client: TestClient) -> None:
    r = client.get("/playbooks/fresh-one")
    assert r.status_code == 200 and r.json()["playbook"]["id"] == "fresh-one"
    assert client.get("/playbooks/other/bullets").json() == {"bullets": []}
    r = client.post("/playbooks/third/embed_prompt", json={"prompt": "hello"})
    assert r.status_code == 200 and r.json()["prompt"].startswith("hello")
    assert {p["id"] for p in client.get("/playbooks").json()["playbooks"]} == {"fresh-one", "other", "third"}


def test_bullet_endpoints_match_the_reference(client: TestClient) -> None:
    b = add(client, "demo", "Use pathlib.Path for file system paths")
    assert BULLET_KEYS <= set(b) and set(b["metadata"]) == META
    assert b["metadata"] == {"helpful_count": 0, "harmful_count": 0, "neutral_count": 0}
    bid = b["id"]
    r = client.patch(f"/playbooks/demo/bullets/{bid}/content", json={"content": "Prefer pathlib over os.path"})
    assert r.status_code == 200 and r.json()["bullet"]["content"] == "Prefer pathlib over os.path"
    for tag in ("helpful", "helpful", "harmful", "neutral"):
        r = client.post(f"/playbooks/demo/bullets/{bid}/increment_{tag}")
        assert r.status_code == 200 and set(r.json()) == {"bullet"}
    assert r.json()["bullet"]["metadata"] == {"helpful_count": 2, "harmful_count": 1, "neutral_count": 1}
    listed = client.get("/playbooks/demo/bullets").json()["bullets"]
    assert [x["id"] for x in listed] == [bid]
    r = client.patch("/playbooks/demo/bullets/nope/content", json={"content": "x"})
    assert r.status_code == 404 and r.json() == NOT_FOUND
    for tag in ("helpful", "harmful", "neutral"):
        assert client.post(f"/playbooks/demo/bullets/nope/increment_{tag}").json() == NOT_FOUND


def test_every_bullet_change_is_a_version(client: TestClient) -> None:
    b = add(client, "demo", "Check for None before indexing")
    client.patch(f"/playbooks/demo/bullets/{b['id']}/content", json={"content": "Guard against None first"})
    client.post(f"/playbooks/demo/bullets/{b['id']}/increment_helpful")
    client.delete(f"/playbooks/demo/bullets/{b['id']}")
    assert [v.number for v in V.list_versions("demo")] == [4, 3, 2, 1, 0]
    assert client.get("/playbooks/demo").json()["playbook"]["current_version"] == 4


def test_retrieve_ranks_by_relevance(client: TestClient) -> None:
    add(client, "demo", "Read CSV files with csv.DictReader")
    add(client, "demo", "Use binary search on sorted arrays")
    add(client, "demo", "Close files with a with-statement")
    r = client.post("/playbooks/demo/bullets/retrieve", json={"user_message": "binary search in a sorted list", "k": 2})
    got = r.json()["retrieved_bullets"]
    assert r.status_code == 200 and len(got) == 2
    assert got[0]["content"] == "Use binary search on sorted arrays" and BULLET_KEYS <= set(got[0])


def test_embed_prompt_wraps_top_k_in_markers(client: TestClient) -> None:
    for i, w in enumerate(WORDS):
        add(client, "demo", f"{w}: " + " ".join(random.Random(i).sample(VOCAB, 8)))
    r = client.post("/playbooks/demo/embed_prompt", json={"prompt": "How do I handle kiwi?", "k": 5})
    text = r.json()["prompt"]
    assert text.startswith("How do I handle kiwi?")
    body = text[text.index(P.BEGIN_MARK):]
    assert body.rstrip().endswith(P.END_MARK)
    assert body.count("helpful=") == 5 and ":: kiwi: " in body
    default = client.post("/playbooks/demo/embed_prompt", json={"prompt": "anything"}).json()["prompt"]
    assert default.count("helpful=") == 20  # k defaults to 20


# ------------------------------------------------------------- beyond the reference


def test_soft_delete_sections_and_edit(client: TestClient) -> None:
    a = add(client, "demo", "Validate input types early", section="Pitfalls")
    add(client, "demo", "Prefer list comprehensions for simple maps")
    r = client.get("/playbooks/demo/sections").json()["sections"]
    assert r == [{"name": "pitfalls", "bullet_count": 1}, {"name": "strategies", "bullet_count": 1}]
    r = client.patch(f"/playbooks/demo/bullets/{a['id']}", json={"section": "checks"})
    assert r.json()["bullet"]["section"] == "checks" and r.json()["bullet"]["content"] == a["content"]
    assert [b["id"] for b in client.get("/playbooks/demo/bullets?section=checks").json()["bullets"]] == [a["id"]]
    r = client.delete(f"/playbooks/demo/bullets/{a['id']}")
    assert r.status_code == 200 and r.json()["bullet"]["status"] == "removed"
    assert a["id"] not in [b["id"] for b in client.get("/playbooks/demo/bullets").json()["bullets"]]
    everything = client.get("/playbooks/demo/bullets?include_removed=true").json()["bullets"]
    assert {b["id"]: b["status"] for b in everything}[a["id"]] == "removed"
    assert client.get(f"/playbooks/demo/bullets/{a['id']}").json() == NOT_FOUND  # removed: 404 unless asked
    r = client.get(f"/playbooks/demo/bullets/{a['id']}", params={"include_removed": True})
    assert r.status_code == 200 and r.json()["bullet"]["status"] == "removed"
    assert client.delete(f"/playbooks/demo/bullets/{a['id']}").status_code == 404
    assert client.post(f"/playbooks/demo/bullets/{a['id']}/increment_helpful").status_code == 404


def test_versions_diff_and_restore(client: TestClient) -> None:
    a = add(client, "demo", "Use enumerate instead of range(len(x))")
    client.patch(f"/playbooks/demo/bullets/{a['id']}/content", json={"content": "Loop with enumerate(x)"})
    b = add(client, "demo", "Use zip to walk two lists together")
    vs = client.get("/playbooks/demo/versions").json()
    assert vs["current_version"] == 3 and [v["number"] for v in vs["versions"]] == [3, 2, 1, 0]
    v1 = client.get("/playbooks/demo/versions/1").json()
    assert [x["content"] for x in v1["bullets"]] == ["Use enumerate instead of range(len(x))"]
    d = client.get("/playbooks/demo/diff", params={"a": 1}).json()["diff"]
    assert d["b"] == 3 and [x["bullet_id"] for x in d["added"]] == [b["id"]]
    assert d["changed"][0]["before"]["content"].startswith("Use enumerate")
    assert d["changed"][0]["after"]["content"] == "Loop with enumerate(x)"
    r = client.post("/playbooks/demo/versions/1/restore")
    assert r.status_code == 200 and r.json()["version"] == 4 and r.json()["playbook"]["current_version"] == 4
    assert [x["content"] for x in client.get("/playbooks/demo/bullets").json()["bullets"]] == [
        "Use enumerate instead of range(len(x))"]
    assert client.get("/playbooks/demo/versions/99").status_code == 404
    assert client.post("/playbooks/demo/versions/99/restore").status_code == 404
    assert client.get("/playbooks/demo/diff", params={"a": 0, "b": 99}).status_code == 404


def test_export_and_import_round_trip(client: TestClient) -> None:
    add(client, "src", "Memoize pure recursive functions with functools.cache", section="performance")
    add(client, "src", "Beware of mutable default arguments", section="pitfalls")
    exported = client.get("/playbooks/src/export")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/json")
    md = client.get("/playbooks/src/export", params={"format": "markdown"})
    assert md.headers["content-type"].startswith("text/markdown") and "## pitfalls" in md.text
    r = client.post("/playbooks/dst/import", content=exported.content, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["imported"] == 2 and r.json()["version"] == 1
    got = client.get("/playbooks/dst/bullets").json()["bullets"]
    assert sorted((b["section"], b["content"]) for b in got) == [
        ("performance", "Memoize pure recursive functions with functools.cache"),
        ("pitfalls", "Beware of mutable default arguments")]
    text = "## tips\n[t-00001] helpful=3 harmful=1 :: Print intermediate values when debugging\n"
    r = client.post("/playbooks/dst/import?replace=true", content=text, headers={"content-type": "text/plain"})
    assert r.status_code == 200
    assert [(b["id"], b["metadata"]["helpful_count"]) for b in client.get("/playbooks/dst/bullets").json()["bullets"]] \
        == [("t-00001", 3)]
    bad = client.post("/playbooks/dst/import", content=b'{"format": "ace-playground/1", "bullets": [{"content": ""}]}')
    assert bad.status_code == 422 and "empty" in err(bad)
    assert client.get("/playbooks/dst").json()["playbook"]["current_version"] == 2  # nothing changed


def test_pending_deltas_approve_and_reject_per_op(client: TestClient) -> None:
    keep = add(client, "demo", "Always run the tests before submitting")
    r = client.post("/playbooks/demo/deltas", json={"reasoning": "from review", "operations": [
        {"type": "ADD", "section": "testing", "content": "Write a failing test first"},
        {"type": "TAG", "bullet_id": keep["id"], "tag": "helpful"},
        {"type": "ADD", "content": "Ignore flaky tests"}]})
    assert r.status_code == 201
    delta = r.json()["delta"]
    assert delta["status"] == "pending" and [o["decision"] for o in delta["operations"]] == ["pending"] * 3
    pending = client.get("/playbooks/demo/deltas", params={"status": "pending"}).json()["deltas"]
    assert [d["id"] for d in pending] == [delta["id"]]
    ops = [o["id"] for o in delta["operations"]]
    r = client.post(f"/playbooks/demo/deltas/{delta['id']}/ops/{ops[2]}/reject", json={"note": "bad advice"})
    assert r.status_code == 200 and r.json()["version"] is None
    r = client.post(f"/playbooks/demo/deltas/{delta['id']}/decisions", json={"decisions": [
        {"op_id": ops[0], "approve": True, "content": "Write a failing test first, then the fix"},
        {"op_id": ops[1], "approve": True}]})
    body = r.json()
    assert r.status_code == 200 and body["version"] == 2 and body["delta"]["status"] == "partially_applied"
    assert [o["decision"] for o in body["delta"]["operations"]] == ["approved", "approved", "rejected"]
    contents = [b["content"] for b in client.get("/playbooks/demo/bullets").json()["bullets"]]
    assert "Write a failing test first, then the fix" in contents and "Ignore flaky tests" not in contents
    r = client.post(f"/playbooks/demo/deltas/{delta['id']}/ops/{ops[0]}/approve")
    assert r.status_code == 409 and "already" in err(r)
    assert client.get("/playbooks/demo/deltas/d-nothere").status_code == 404
    assert client.get(f"/playbooks/other/deltas/{delta['id']}").status_code == 404


def test_apply_mode_delta_is_all_or_nothing(client: TestClient) -> None:
    r = client.post("/playbooks/demo/deltas", json={"mode": "apply", "operations": [
        {"type": "ADD", "content": "fine"}, {"type": "TAG", "bullet_id": "b-09999", "tag": "helpful"}]})
    assert r.status_code == 422 and "does not exist" in err(r)
    assert r.json()["detail"][0]["loc"] == ["body", "operations", 1, "bullet_id"]
    assert client.get("/playbooks/demo/bullets").json() == {"bullets": []}
    r = client.post("/playbooks/demo/deltas", json={"mode": "apply", "operations": [{"type": "ADD", "content": "ok"}]})
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["delta"]["status"] == "applied"


def test_review_mode_setting(client: TestClient) -> None:
    r = client.post("/playbooks", json={"name": "Reviewed", "id": "rev", "review_mode": "manual"})
    assert r.status_code == 201 and r.json()["playbook"]["review_mode"] == "manual"
    assert client.post("/playbooks", json={"name": "again", "id": "rev"}).status_code == 409
    assert client.patch("/playbooks/rev", json={"name": "R"}).json()["playbook"]["review_mode"] == "manual"
    assert client.patch("/playbooks/rev", json={"review_mode": None}).json()["playbook"]["review_mode"] is None


# ------------------------------------------------------------- bad input and security


@pytest.mark.parametrize("pid", ["bad id", "..", "-leading-dash", "x" * 65, "a$b"])
def test_bad_playbook_ids_are_422(client: TestClient, pid: str) -> None:
    r = client.post(f"/playbooks/{pid}/embed_prompt", json={"prompt": "x"})
    assert r.status_code in (404, 422), r.text  # '..' is normalised away by the URL layer -> no route
    if r.status_code == 422:
        err = r.json()["detail"][0]
        assert err["loc"] == ["path", "playbook_id"] and "invalid playbook id" in err["msg"]
    assert client.get("/playbooks").json() == {"playbooks": []}


def test_validation_errors_name_the_fields(client: TestClient) -> None:
    r = client.post("/playbooks/demo/episodes/learn", json={"trajectory": 5})
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert ("body", "user_message") in locs and ("body", "trajectory") in locs
    r = client.post("/playbooks/demo/embed_prompt", json={"prompt": "x", "k": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
    r = client.post("/playbooks/demo/embed_prompt", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/playbooks/demo/bullets", json={"content": "   "})
    assert r.status_code == 422 and "empty" in err(r)


def test_body_size_limit_is_413(db_url: str, settings_env: Any) -> None:
    settings_env(ACE_SERVICE_MAX_BODY="2000")
    with TestClient(create_app(start_worker=False)) as c:
        r = c.post("/playbooks/demo/embed_prompt", json={"prompt": "x" * 5000})
        assert r.status_code == 413 and "too large" in err(r) and "2,000" in err(r)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        r = c.post("/playbooks/demo/embed_prompt", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/playbooks/demo/embed_prompt", json={"prompt": "small"}).status_code == 200


def test_bearer_token_when_configured(db_url: str, settings_env: Any) -> None:
    settings_env(ACE_SERVICE_TOKEN="s3cret-token")
    with TestClient(create_app(start_worker=False)) as c:
        r = c.get("/playbooks")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "ACE_SERVICE_TOKEN" in err(r) and "s3cret" not in r.text
        assert c.get("/playbooks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/playbooks", headers={"Authorization": "s3cret-token"}).status_code == 401
        assert c.get("/playbooks", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/playbooks", headers={"Authorization": "bearer  s3cret-token"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/health").json()["auth"] is True
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_no_token_by_default(client: TestClient) -> None:
    assert client.get("/playbooks").status_code == 200
    assert client.get("/health").json()["auth"] is False


def test_cors_preflight(client: TestClient) -> None:
    r = client.options("/playbooks",
                       headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_unexpected_errors_are_500_without_a_trace(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> str:
        raise RuntimeError("secret internals at /work/main/core/playbook.py line 1")

    monkeypatch.setattr(P, "embed_prompt", boom)
    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = c.post("/playbooks/demo/embed_prompt", json={"prompt": "x"})
    assert r.status_code == 500 and r.json() == {"detail": [{"loc": [], "msg": "internal error", "type": "internal"}]}
    assert "Traceback" not in r.text and "secret" not in r.text


@SQLITE_ONLY  # fills SQLite's file with PRAGMA max_page_count
def test_a_full_database_is_503_and_changes_nothing(db_url: str) -> None:
    """A delta the database cannot take (here: the file may not grow) is a retryable 503, not a 500."""
    from sqlalchemy import event

    from core.storage.db import dispose_engines, get_engine

    P.apply_delta("full", [{"type": "ADD", "content": "seed"}])
    engine = get_engine()
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    event.listen(engine, "connect", lambda dbapi, _rec: dbapi.execute(f"PRAGMA max_page_count={pages}"))
    engine.dispose()
    try:
        with TestClient(create_app(start_worker=False), raise_server_exceptions=False) as c:
            r = c.post("/playbooks/full/deltas", json={"mode": "apply", "operations": [
                {"type": "ADD", "content": f"{'long text ' * 300} {i}"} for i in range(200)]})
            assert r.status_code == 503 and "retry" in err(r), r.text
    finally:
        dispose_engines()
    assert [b.content for b in P.active_bullets("full")] == ["seed"] and P.get_playbook("full").current_version == 1


def test_docs_and_health(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/playbooks/{playbook_id}/embed_prompt", "/playbooks/{playbook_id}/episodes/learn",
              "/playbooks/{playbook_id}/episodes/learn/{learn_job_id}", "/health"):
        assert p in paths
    assert client.get("/health").json()["status"] == "ok"
