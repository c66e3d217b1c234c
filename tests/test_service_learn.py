"""episodes/learn end to end: the real job queue and roles against the fake LLM server."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import jobs
from tests.fake_llm import FakeLLM

pytestmark = pytest.mark.both_dbs  # every test here runs on SQLite and on PostgreSQL


def drain() -> int:
    """Run queued jobs in this thread until none is left (deterministic, no worker thread)."""
    n = 0
    while (job := jobs.claim("test-worker")) is not None:
        jobs.run_one(job)
        n += 1
    return n


def reflection(tags: list[dict[str, str]], insight: str = "Check edge cases first") -> dict[str, Any]:
    return {"reasoning": "looked at the run", "error_identification": "missed the empty list",
            "root_cause_analysis": "no guard", "correct_approach": "guard empty input",
            "key_insight": insight, "bullet_tags": tags}


def curation(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"reasoning": "one new lesson", "operations": list(ops)}


def seed(c: TestClient, pid: str) -> dict[str, str]:
    ids = {}
    for key, text in (("sort", "Sort records with sorted(key=...) rather than manual loops"),
                      ("empty", "Return early on empty input lists to avoid IndexError"),
                      ("http", "Set explicit timeouts on every HTTP request")):
        ids[key] = c.post(f"/playbooks/{pid}/bullets", json={"content": text}).json()["bullet"]["id"]
    return ids


def job(c: TestClient, pid: str, job_id: str) -> dict[str, Any]:
    r = c.get(f"/playbooks/{pid}/episodes/learn/{job_id}")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"learn_job"}
    return r.json()["learn_job"]


def test_learn_workflow_end_to_end(client: TestClient, fake_llm: FakeLLM) -> None:
    ids = seed(client, "agent")
    shown = client.post("/playbooks/agent/embed_prompt",
                        json={"prompt": "Sort the records; the input list may be empty", "k": 2}).json()["prompt"]
    assert f"[{ids['sort']}]" in shown and f"[{ids['empty']}]" in shown and f"[{ids['http']}]" not in shown
    fake_llm.reply(reflection([{"id": ids["sort"], "tag": "helpful"}, {"id": ids["empty"], "tag": "harmful"}]),
                   curation({"type": "ADD", "section": "edge_cases", "content": "Test the empty list case explicitly"}))
    r = client.post("/playbooks/agent/episodes/learn", json={
        "user_message": shown, "trajectory": f"{shown}\n\nassistant: wrote code\nerror: IndexError on []",
        "evaluation": "1 test failed", "reflector_additional_instructions": "Be terse."})
    assert r.status_code == 200 and set(r.json()) == {"learn_job_id"}
    jid = r.json()["learn_job_id"]
    before = job(client, "agent", jid)
    assert before["status"] == "pending" and before["reflection"] is None and before["error"] is None
    assert drain() == 1
    done = job(client, "agent", jid)
    assert done["status"] == "completed" and done["error"] is None and done["playbook_id"] == "agent"
    assert done["reflection"]["key_insight"] == "Check edge cases first"
    assert done["curation"]["operations"][0]["content"] == "Test the empty list case explicitly"
    assert done["delta_status"] == "applied" and done["version"] == 4  # 3 seeded bullets, then this delta
    bullets = {b["id"]: b for b in client.get("/playbooks/agent/bullets").json()["bullets"]}
    assert bullets[ids["sort"]]["metadata"]["helpful_count"] == 1
    assert bullets[ids["empty"]]["metadata"]["harmful_count"] == 1
    assert any(b["content"] == "Test the empty list case explicitly" and b["section"] == "edge_cases"
               for b in bullets.values())
    # What the reflector saw: the bullets recovered from the markers, the trajectory and our instructions.
    sent = "\n".join(m["content"] for m in fake_llm.chat_requests()[0]["messages"])
    assert "Return early on empty input lists" in sent and "IndexError on []" in sent and "Be terse." in sent


def test_used_bullets_come_from_the_markers(client: TestClient, fake_llm: FakeLLM) -> None:
    ids = seed(client, "agent")
    shown = client.post("/playbooks/agent/embed_prompt",
                        json={"prompt": "HTTP request timeouts", "k": 1}).json()["prompt"]
    assert f"[{ids['http']}]" in shown and f"[{ids['sort']}]" not in shown
    fake_llm.reply(reflection([]), curation())
    # The markers are in the trajectory only; the user_message is the bare task.
    jid = client.post("/playbooks/agent/episodes/learn", json={
        "user_message": "HTTP request timeouts", "trajectory": f"system: {shown}\nassistant: done",
    }).json()["learn_job_id"]
    drain()
    assert job(client, "agent", jid)["status"] == "completed"
    user_msg = fake_llm.chat_requests()[0]["messages"][-1]["content"]
    used_part = user_msg.split("assistant: done")[0]
    assert "Set explicit timeouts on every HTTP request" in user_msg
    assert "Sort records with sorted" not in used_part


def test_manual_review_mode_leaves_a_pending_delta(client: TestClient, fake_llm: FakeLLM) -> None:
    client.patch("/playbooks/reviewed", json={"review_mode": "manual"})
    fake_llm.reply(reflection([]), curation({"type": "ADD", "content": "Log the request id with every error"}))
    jid = client.post("/playbooks/reviewed/episodes/learn", json={
        "user_message": "debug the service", "trajectory": "it failed without context"}).json()["learn_job_id"]
    drain()
    done = job(client, "reviewed", jid)
    assert done["status"] == "completed" and done["delta_status"] == "pending" and done["version"] is None
    assert client.get("/playbooks/reviewed/bullets").json() == {"bullets": []}
    pending = client.get("/playbooks/reviewed/deltas", params={"status": "pending"}).json()["deltas"]
    assert [d["id"] for d in pending] == [done["delta_id"]]
    op = pending[0]["operations"][0]
    r = client.post(f"/playbooks/reviewed/deltas/{done['delta_id']}/ops/{op['id']}/approve")
    assert r.status_code == 200 and r.json()["version"] == 1
    assert [b["content"] for b in client.get("/playbooks/reviewed/bullets").json()["bullets"]] == [
        "Log the request id with every error"]


def test_failed_learn_job_is_recorded_and_can_be_retried(client: TestClient, fake_llm: FakeLLM) -> None:
    # No scripted reply: the fake answers 500 every time, like a model server that is down.
    jid = client.post("/playbooks/agent/episodes/learn", json={
        "user_message": "task", "trajectory": "run"}).json()["learn_job_id"]
    drain()
    failed = job(client, "agent", jid)
    assert failed["status"] == "failed" and failed["error"] and "reflector" in failed["error"]
    assert client.post(f"/playbooks/agent/episodes/learn/{jid}/retry").status_code == 200
    assert job(client, "agent", jid)["status"] == "pending"
    fake_llm.reply(reflection([]), curation({"type": "ADD", "content": "Retry transient model failures"}))
    drain()
    done = job(client, "agent", jid)
    assert done["status"] == "completed" and done["error"] is None and done["attempts"] == 2
    r = client.post(f"/playbooks/agent/episodes/learn/{jid}/retry")
    assert r.status_code == 409 and "only failed" in r.json()["detail"][0]["msg"]


def test_learn_without_a_model_fails_clearly(client: TestClient) -> None:
    jid = client.post("/playbooks/agent/episodes/learn", json={
        "user_message": "task", "trajectory": "run"}).json()["learn_job_id"]
    drain()
    failed = job(client, "agent", jid)
    assert failed["status"] == "failed" and "OPENAI_API_KEY" in failed["error"]


def test_learn_job_lookup_is_per_playbook(client: TestClient) -> None:
    jid = client.post("/playbooks/one/episodes/learn",
                      json={"user_message": "u", "trajectory": "t"}).json()["learn_job_id"]
    r = client.get(f"/playbooks/two/episodes/learn/{jid}")
    assert r.status_code == 404 and r.json()["detail"] == [
        {"loc": ["path", "learn_job_id"], "msg": "Learn job not found", "type": "not_found"}]
    assert client.get("/playbooks/one/episodes/learn/job-unknown").status_code == 404
    assert client.post("/playbooks/one/episodes/learn/job-unknown/retry").status_code == 404
    episode_job = jobs.enqueue("episode", {"spec": {}})
    assert client.get(f"/playbooks/one/episodes/learn/{episode_job}").status_code == 404
