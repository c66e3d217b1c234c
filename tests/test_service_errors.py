"""Typed errors and their status codes: the service picks the code from the exception's kind, never its text."""

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.errors import AceError, Conflict, Invalid, Missing, NotFound
from core.jobs.queue import NotRetryable
from core.playbook.ops import BulletMissing, DeltaConflict, DeltaError
from core.service import errors
from core.service.app import create_app
from core.service.routes import bullets as bullet_routes


def raiser(exc: AceError) -> Callable[[], None]:
    def route() -> None:
        raise exc

    return route


KINDS = [
    (NotFound("Widget not found"), 404, "Widget not found"),
    (Conflict("Widget is busy"), 409, "Widget is busy"),
    (Invalid("Widget is malformed"), 422, "Widget is malformed"),
    (DeltaError("the delta has no operations"), 422, "the delta has no operations"),
    (BulletMissing("bullet 'b-1' was removed"), 422, "bullet 'b-1' was removed"),  # in a delta: the delta is invalid
    (DeltaConflict("op id 3 was already approved"), 409, "op id 3 was already approved"),  # Conflict comes first
    (Missing("job 'j-1' does not exist"), 404, "job 'j-1' does not exist"),  # a KeyError, yet not quoted
    (NotRetryable("job j-1 is running"), 409, "job j-1 is running"),
]


@pytest.fixture()
def kinds_client(db_url: str) -> Iterator[TestClient]:
    app: FastAPI = create_app(start_worker=False)
    for i, (exc, _, _) in enumerate(KINDS):
        app.add_api_route(f"/raise/{i}", raiser(exc))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("i", range(len(KINDS)), ids=[type(k[0]).__name__ for k in KINDS])
def test_each_kind_answers_its_status_with_the_reference_envelope(kinds_client: TestClient, i: int) -> None:
    _, status, message = KINDS[i]
    r = kinds_client.get(f"/raise/{i}")
    assert r.status_code == status and r.json() == {"detail": [{"loc": [], "msg": message, "type": KINDS[i][0].code}]}


def test_typed_errors_stay_what_callers_caught_before() -> None:
    assert issubclass(DeltaError, ValueError) and issubclass(DeltaConflict, DeltaError)
    assert issubclass(BulletMissing, DeltaError) and not issubclass(BulletMissing, NotFound)
    assert issubclass(Missing, KeyError) and issubclass(NotRetryable, ValueError)
    body = json.loads(errors.ace_error_json(Missing("job 'x' does not exist"), 404).body)
    assert body == {"detail": [{"loc": [], "msg": "job 'x' does not exist", "type": "not_found"}]}


def test_a_bullet_removed_after_the_check_is_not_found(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL names the bullet, so BulletMissing from the delta becomes 404, as when the check catches it."""
    r = client.post("/playbooks/demo/bullets", json={"content": "Check the input before parsing it"})
    bid = r.json()["bullet"]["id"]
    assert client.delete(f"/playbooks/demo/bullets/{bid}").status_code == 200
    monkeypatch.setattr(bullet_routes, "live_bullet", lambda pid, bid: None)  # the race: the check saw it live
    for call in (lambda: client.delete(f"/playbooks/demo/bullets/{bid}"),
                 lambda: client.post(f"/playbooks/demo/bullets/{bid}/increment_helpful"),
                 lambda: client.patch(f"/playbooks/demo/bullets/{bid}/content", json={"content": "new text"})):
        r = call()
        assert r.status_code == 404 and r.json()["detail"] == [
            {"loc": ["path", "bullet_id"], "msg": "Bullet not found", "type": "not_found"}]


def test_approving_an_update_whose_bullet_changed_since_is_a_conflict(client: TestClient) -> None:
    r = client.post("/playbooks/demo/bullets", json={"content": "Prefer pathlib over os.path"})
    bid = r.json()["bullet"]["id"]
    r = client.post("/playbooks/demo/deltas", json={"operations": [
        {"type": "UPDATE", "bullet_id": bid, "content": "Prefer pathlib.Path over os.path for file paths"}]})
    delta = r.json()["delta"]
    assert client.patch(f"/playbooks/demo/bullets/{bid}/content", json={"content": "Use pathlib"}).status_code == 200
    r = client.post(f"/playbooks/demo/deltas/{delta['id']}/ops/{delta['operations'][0]['id']}/approve")
    assert r.status_code == 409 and "changed since" in r.json()["detail"][0]["msg"]


def test_approving_an_op_whose_bullet_is_gone_is_invalid(client: TestClient) -> None:
    r = client.post("/playbooks/demo/bullets", json={"content": "Log the seed of every random run"})
    bid = r.json()["bullet"]["id"]
    r = client.post("/playbooks/demo/deltas", json={"operations": [
        {"type": "TAG", "bullet_id": bid, "tag": "helpful"}]})
    delta = r.json()["delta"]
    assert client.delete(f"/playbooks/demo/bullets/{bid}").status_code == 200
    r = client.post(f"/playbooks/demo/deltas/{delta['id']}/ops/{delta['operations'][0]['id']}/approve")
    assert r.status_code == 422 and "was removed" in r.json()["detail"][0]["msg"]


def test_an_error_names_the_field_it_is_about() -> None:
    """`loc` of a `core.errors` kind: a path into the body (as `core.playbook` names a delta's fields), or
    a full location when it starts with a part of the request."""
    def loc(exc: AceError) -> list[object]:
        return json.loads(errors.ace_error_json(exc, 422).body)["detail"][0]["loc"]

    assert loc(BulletMissing("operation 2 (TAG): ...", loc=("operations", 1, "bullet_id"))) == [
        "body", "operations", 1, "bullet_id"]
    assert loc(NotFound("Bullet not found", loc=("path", "bullet_id"))) == ["path", "bullet_id"]
    assert loc(Invalid("no field to blame")) == []
