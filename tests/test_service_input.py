"""Hostile and careless input at the service's door (issue 14): never a 5xx, always 422/413/404 naming the field.

Lone surrogates, NUL, deep nesting and loose types through the real server on one keep-alive connection;
explicit deltas naming bullets that do not exist; ids with markup or `..`; the OpenAPI document, `Allow`
and the one error shape; uvicorn's access log without query strings.
"""

import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import playbook as P
from core.playbook import portability
from core.playbook.ops import BulletMissing, DeltaError
from core.service.app import NoQueryString, log_config
from core.service.errors import Error
from tests.test_service_support import kill, output, start_process

SURROGATE = b'"x\\ud800y"'  # JSON text: a lone high surrogate, escaped as clients send it
NUL = b'"x\\u0000y"'


def problem(r: Any) -> dict[str, Any]:
    """The one error of a response, checked against the one shape every error has."""
    body = r.json()
    Error.model_validate(body)
    assert len(body["detail"]) >= 1 and all(set(e) == {"loc", "msg", "type"} for e in body["detail"]), body
    return dict(body["detail"][0])


# ------------------------------------------------------------------ through the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    db = tmp_path_factory.mktemp("input") / "ace.db"
    proc, base = start_process({"ACE_DB_URL": f"sqlite:///{db}", "ACE_WORKER_IN_APP": "0"})
    try:
        yield proc, int(base.rsplit(":", 1)[1])
    finally:
        kill(proc)


BAD_TEXT = [  # (path, JSON body with a placeholder for the bad string, the loc the 422 must name)
    ("/playbooks/door/bullets", b'{"content": %s}', ["body", "content"]),
    ("/playbooks/door/bullets", b'{"content": "fine", "section": %s}', ["body", "section"]),
    ("/playbooks/door/embed_prompt", b'{"prompt": %s, "k": 3}', ["body", "prompt"]),
    ("/playbooks/door/bullets/retrieve", b'{"user_message": %s}', ["body", "user_message"]),
    ("/playbooks/door/deltas", b'{"operations": [{"type": "ADD", "content": "ok"}, {"type": "ADD", "content": %s}]}',
     ["body", "operations", 1, "content"]),
    ("/playbooks/door/deltas", b'{"reasoning": %s, "operations": [{"type": "ADD", "content": "ok"}]}',
     ["body", "reasoning"]),
    ("/playbooks", b'{"name": %s}', ["body", "name"]),
    ("/playbooks", b'{"name": "n", "description": %s}', ["body", "description"]),
    ("/playbooks/door/episodes/learn", b'{"user_message": "u", "trajectory": %s}', ["body", "trajectory"]),
    ("/playbooks/door/import", b'{"format": "ace-playground/1", "bullets": [{"content": %s}]}',
     ["body", "bullets", 0, "content"]),
]


def test_lone_surrogates_and_nul_are_422_naming_the_field_and_keep_the_connection(server: tuple[Any, int]) -> None:
    """One keep-alive connection (http.client never reconnects on its own): every bad body is a 422 that
    names the field, and the connection serves the next request. Nothing was stored."""
    proc, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for bad in (SURROGATE, NUL):
            for path, template, loc in BAD_TEXT:
                conn.request("POST", path, body=template % bad, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                body = json.loads(r.read())
                assert r.status == 422, (path, bad, body)
                err = body["detail"][0]
                assert err["loc"] == loc and err["type"] in ("string_surrogate", "string_nul"), (path, body)
                assert ("surrogate" if bad is SURROGATE else "NUL") in err["msg"]
                conn.request("GET", "/playbooks/door/bullets")  # the same connection still works
                r = conn.getresponse()
                assert r.status == 200 and json.loads(r.read()) == {"bullets": []}
        # a surrogate pair is a real character, not a lone surrogate
        conn.request("POST", "/playbooks/door/bullets", body=b'{"content": "smile \\ud83d\\ude00"}',
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 201 and json.loads(r.read())["bullet"]["content"] == "smile \U0001f600"
    finally:
        conn.close()
    assert "Traceback" not in output(proc) and " 500 " not in output(proc), output(proc)[-3000:]


def test_deep_json_is_refused_before_parsing(server: tuple[Any, int]) -> None:
    """100k levels of nesting (RecursionError in the parser before) is a 422 on the import and on any route."""
    proc, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for path, body in (("/playbooks/deep/import", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
                           ("/playbooks/deep/embed_prompt", b"[" * 100_000),
                           ("/playbooks/deep/deltas", b'{"operations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                           ("/playbooks/deep/bullets", b'{"content":' * 50_000)):
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            got = json.loads(r.read())
            assert r.status == 422 and got["detail"][0]["type"] in ("json_too_deep", "json_invalid"), (path, got)
        conn.request("POST", "/playbooks/deep/import", body=b'{"a":' * 40 + b"1" + b"}" * 40,
                     headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        got = json.loads(r.read())
        assert r.status == 422 and "32 levels" in got["detail"][0]["msg"]
    finally:
        conn.close()
    assert "Traceback" not in output(proc)


@pytest.mark.parametrize("data", [b'{"a":' * 40 + b"1" + b"}" * 40, b'{"bullets": [' * 3 + b"]" * 2 + b"}",
                                  b'{"bullets": [{"content": "x", "helpful": ' + b"9" * 5000 + b"}]}",
                                  b'{"skills": 5}'])
def test_the_import_parser_refuses_what_it_must_not_parse(db_url: str, data: bytes) -> None:
    """The same limits for every caller of the import (the CLI too): a DeltaError (exit 2, or 422), never
    a RecursionError or a bare ValueError."""
    with pytest.raises(DeltaError, match="levels deep|invalid JSON|digits|skillbook"):
        portability.parse(data)


def test_numbers_too_long_to_parse_and_bodies_not_utf8_are_422(client: TestClient) -> None:
    for path, body in (("/playbooks/demo/embed_prompt", b'{"prompt": "p", "k": ' + b"1" * 5000 + b"}"),
                       ("/playbooks/demo/import", b'{"format": "ace-playground/1", "bullets": [{"content": "x", '
                                                  b'"helpful": ' + b"9" * 5000 + b"}]}"),
                       ("/playbooks/demo/embed_prompt", b'{"prompt": "caf\xe9"}')):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and problem(r)["type"] == "json_invalid", (path, r.text)


def test_the_access_log_filter_drops_query_strings() -> None:
    """`ace serve` gives uvicorn a logging configuration whose access handler drops query strings."""
    config = log_config()
    assert "no_query_string" in config["handlers"]["access"]["filters"]
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/playbooks?token=abc", "1.1", 200), None)
    assert NoQueryString().filter(record) and record.getMessage() == '127.0.0.1:5 - "GET /playbooks HTTP/1.1" 200'


def test_the_access_log_has_no_query_strings(server: tuple[Any, int]) -> None:
    proc, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/playbooks?token=probe-secret-4242&x=1")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    log = output(proc)
    assert '"GET /playbooks HTTP/1.1" 200' in log, log[-2000:]
    assert "probe-secret-4242" not in log and "token=" not in log


# ------------------------------------------------------------------ loose types, sizes, ids


@pytest.mark.parametrize("body,loc", [
    ({"prompt": "p", "k": True}, ["body", "k"]),
    ({"prompt": "p", "k": "5"}, ["body", "k"]),
    ({"prompt": "p", "k": 5.0}, ["body", "k"]),
    ({"prompt": 5}, ["body", "prompt"]),
])
def test_integers_and_strings_are_strict(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    r = client.post("/playbooks/demo/embed_prompt", json=body)
    assert r.status_code == 422 and problem(r)["loc"] == loc
    r = client.post("/playbooks/demo/bullets/retrieve", json={"user_message": "m", "k": True})
    assert r.status_code == 422 and problem(r)["loc"] == ["body", "k"]


def test_decisions_are_strict(client: TestClient) -> None:
    r = client.post("/playbooks/demo/deltas", json={"operations": [{"type": "ADD", "content": "Write tests"}]})
    delta = r.json()["delta"]
    op = delta["operations"][0]["id"]
    for bad, loc in (({"op_id": str(op), "approve": True}, "op_id"), ({"op_id": op, "approve": "yes"}, "approve"),
                     ({"op_id": op, "approve": 1}, "approve")):
        r = client.post(f"/playbooks/demo/deltas/{delta['id']}/decisions", json={"decisions": [bad]})
        assert r.status_code == 422 and problem(r)["loc"] == ["body", "decisions", 0, loc]
    assert client.get(f"/playbooks/demo/deltas/{delta['id']}").json()["delta"]["status"] == "pending"


def test_sizes_are_bounded(client: TestClient) -> None:
    r = client.post("/playbooks/demo/deltas", json={"operations": [{"type": "ADD", "content": f"b{i}"}
                                                                  for i in range(1001)]})
    assert r.status_code == 422 and problem(r)["loc"] == ["body", "operations"]
    r = client.post("/playbooks/demo/bullets", json={"content": "x" * 4001})
    assert r.status_code == 422 and problem(r)["loc"] == ["body", "content"]
    r = client.post("/playbooks/demo/deltas", json={"operations": [{"type": "ADD", "content": "y" * 4001}]})
    assert r.status_code == 422 and "4,000" in problem(r)["msg"]
    r = client.post("/playbooks", json={"name": "n" * 201})
    assert r.status_code == 422 and problem(r)["loc"] == ["body", "name"]
    assert client.get("/playbooks/demo/bullets").json() == {"bullets": []}


@pytest.mark.parametrize("path", [
    "/playbooks/demo/bullets/%3Ca%20href%3Dx%3E", "/playbooks/demo/bullets/..%2F..%2Fx",
    "/playbooks/demo/bullets/%2E%2E", "/playbooks/demo/deltas/..%2F..%2Fx", "/playbooks/demo/deltas/a%00b",
    "/playbooks/demo/episodes/learn/%3Cscript%3E", "/playbooks/..%2F..%2Fx/bullets", "/playbooks/%2E%2E",
    "/playbooks/demo/bullets/" + "b" * 65,
])
def test_ids_in_paths_are_validated(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code, r.text)
    err = problem(r)
    if r.status_code == 422:
        assert err["loc"][0] == "path" and "invalid" in err["msg"], err
    created = {p["id"] for p in client.get("/playbooks").json()["playbooks"]}
    assert created <= {"demo"}  # no playbook was made of a bad id on the way


def test_an_op_naming_an_id_with_markup_is_refused(client: TestClient) -> None:
    link = '<a href="http://evil.example/" style="position:fixed;inset:0">x</a>'
    for mode in ("propose", "apply"):
        r = client.post("/playbooks/demo/deltas", json={"mode": mode, "operations": [
            {"type": "REMOVE", "bullet_id": link}]})
        assert r.status_code == 422 and problem(r)["loc"] == ["body", "operations", 0, "bullet_id"]
        r = client.post("/playbooks/demo/deltas", json={"mode": mode, "operations": [
            {"type": "MERGE", "bullet_ids": ["b-00001", link], "content": "merged"}]})
        assert r.status_code == 422 and problem(r)["loc"] == ["body", "operations", 0, "bullet_ids", 1]
    assert client.get("/playbooks/demo/deltas").json() == {"deltas": []}


# ------------------------------------------------------------------ explicit deltas name bullets that exist


@pytest.fixture()
def seeded(client: TestClient) -> tuple[TestClient, list[str]]:
    ids = [client.post("/playbooks/demo/bullets", json={"content": c}).json()["bullet"]["id"]
           for c in ("Check inputs before parsing", "Log the seed of every run", "Prefer pathlib for paths")]
    assert client.delete(f"/playbooks/demo/bullets/{ids[2]}").status_code == 200
    return client, ids


@pytest.mark.parametrize("mode", ["propose", "apply"])
@pytest.mark.parametrize("op,loc,says", [
    ({"type": "TAG", "bullet_id": "b-09999", "tag": "helpful"}, ["bullet_id"],
     "operation 2 (TAG): bullet 'b-09999' does not exist in playbook 'demo'"),
    ({"type": "UPDATE", "bullet_id": "REMOVED", "content": "new"}, ["bullet_id"], "was removed"),
    ({"type": "REMOVE", "bullet_id": "REMOVED"}, ["bullet_id"], "operation 2 (REMOVE): bullet"),
    ({"type": "MERGE", "bullet_ids": ["FIRST", "b-09999"], "content": "both"}, ["bullet_ids", 1], "'b-09999'"),
])
def test_a_delta_naming_a_missing_or_removed_bullet_is_422_and_changes_nothing(
        seeded: tuple[TestClient, list[str]], mode: str, op: dict[str, Any], loc: list[Any], says: str) -> None:
    client, ids = seeded
    op = json.loads(json.dumps(op).replace("REMOVED", ids[2]).replace("FIRST", ids[0]))
    before = client.get("/playbooks/demo").json()["playbook"]["current_version"]
    deltas = client.get("/playbooks/demo/deltas").json()["deltas"]
    r = client.post("/playbooks/demo/deltas", json={"mode": mode, "operations": [
        {"type": "ADD", "content": "A new bullet that must not land"}, op]})
    err = problem(r)
    assert r.status_code == 422 and err["loc"] == ["body", "operations", 1, *loc] and says in err["msg"], err
    assert err["type"] == "bullet_missing"
    assert client.get("/playbooks/demo").json()["playbook"]["current_version"] == before  # all or nothing
    assert client.get("/playbooks/demo/deltas").json()["deltas"] == deltas  # no proposal stored either
    assert len(client.get("/playbooks/demo/bullets").json()["bullets"]) == 2


def test_propose_and_apply_delta_check_the_bullets_in_python_too(seeded: tuple[TestClient, list[str]]) -> None:
    _, ids = seeded
    for call in (P.propose_delta, P.apply_delta):
        with pytest.raises(BulletMissing, match="was removed") as e:
            call("demo", [{"type": "TAG", "bullet_id": ids[2], "tag": "harmful"}])
        assert e.value.loc == ("operations", 0, "bullet_id")
    did = P.propose_delta("demo", [{"type": "TAG", "bullet_id": ids[0], "tag": "helpful"}])
    assert did.startswith("d-")


# ------------------------------------------------------------------ the OpenAPI document, Allow, one error shape


def test_every_error_response_is_documented_with_the_one_error_model(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"] and "securitySchemes" not in doc["components"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"413"} <= codes, (method, path)
            if path != "/health":
                assert {"401", "422", "503"} <= codes, (method, path)
            if "{bullet_id}" in path or "{delta_id}" in path or "{learn_job_id}" in path or "{number}" in path:
                assert "404" in codes, (method, path)
            for code, resp in op["responses"].items():
                if not code.startswith("2"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    get_bullet = doc["paths"]["/playbooks/{playbook_id}/bullets/{bullet_id}"]["get"]
    assert "404 unless `include_removed=true`" in get_bullet["description"]


def test_options_head_and_405_name_every_method_of_the_path(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for template, item in doc["paths"].items():
        path = template.replace("{playbook_id}", "demo").replace("{bullet_id}", "b-1").replace(
            "{learn_job_id}", "j-1").replace("{delta_id}", "d-1").replace("{number}", "0").replace("{op_id}", "1")
        methods = {m.upper() for m in item} | {"OPTIONS"} | ({"HEAD"} if "get" in item else set())
        r = client.options(path)
        assert r.status_code == 204 and set(r.headers["allow"].split(", ")) == methods, (path, r.headers)
        unused = next(m for m in ("PUT", "DELETE", "PATCH", "POST") if m not in methods)
        r = client.request(unused, path)
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == methods, (unused, path)
        assert problem(r)["type"] == "method_not_allowed"
    r = client.head("/playbooks")
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    r = client.options("/playbooks",
                       headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_every_error_has_the_one_shape(client: TestClient, settings_env: Any) -> None:
    assert client.post("/playbooks", json={"name": "x", "id": "taken"}).status_code == 201
    seen = {}
    for r in (client.get("/nowhere"), client.put("/playbooks"), client.get("/playbooks/demo/bullets/b-404"),
              client.post("/playbooks/demo/embed_prompt", json={"k": 1}),
              client.post("/playbooks/demo/embed_prompt", content=b"{not json",
                          headers={"content-type": "application/json"}),
              client.post("/playbooks/demo/import", content=b"no bullets here", headers={"content-type": "text/plain"}),
              client.post("/playbooks", json={"name": "x", "id": "taken"})):
        seen[r.status_code] = problem(r)
    assert set(seen) == {404, 405, 422, 409}
    settings_env(ACE_SERVICE_TOKEN="s3cret-token-value", ACE_SERVICE_MAX_BODY="100")
    from core.service.app import create_app

    with TestClient(create_app(start_worker=False)) as c:
        assert problem(c.get("/playbooks"))["loc"] == ["header", "authorization"]
        doc = c.get("/openapi.json").json()  # with a token, the document says so (and only then)
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["paths"]["/playbooks"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in doc["paths"]["/health"]["get"]
        r = c.post("/playbooks", json={"name": "x" * 200}, headers={"Authorization": "Bearer s3cret-token-value"})
        assert r.status_code == 413 and problem(r)["type"] == "too_large"
