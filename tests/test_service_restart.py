"""A learn job survives the server: real uvicorn processes sharing one SQLite file."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import Delay, FakeLLM
from tests.support import wait_for
from tests.test_service_support import kill, output, start_process

REFLECTION = {"reasoning": "r", "error_identification": "", "root_cause_analysis": "", "correct_approach": "",
              "key_insight": "Persist work before acknowledging it", "bullet_tags": []}
CURATION = {"reasoning": "c", "operations": [{"type": "ADD", "content": "Queue work durably before answering"}]}


@pytest.fixture()
def fake() -> Any:
    f = FakeLLM().start()
    yield f
    f.stop()


def llm_env(fake: FakeLLM) -> dict[str, str]:
    return {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test", "ACE_MODEL": "fake-model",
            "ACE_LLM_MAX_RETRIES": "1", "ACE_LLM_TIMEOUT": "10"}


def wait_status(base: str, pid: str, jid: str, want: str, timeout: float = 30.0) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal job
        job = httpx.get(f"{base}/playbooks/{pid}/episodes/learn/{jid}", timeout=5).json()["learn_job"]
        return job if job["status"] == want else None

    return wait_for(reached, timeout=timeout, interval=0.1,
                    message=lambda: f"job {jid} is {job.get('status')}, wanted {want}: {job}")


def test_job_queued_before_a_restart_is_not_lost(tmp_path: Path, fake: FakeLLM) -> None:
    db = {"ACE_DB_URL": f"sqlite:///{tmp_path / 'ace.db'}"}
    first, base = start_process({**db, "ACE_WORKER_IN_APP": "0"})
    try:
        r = httpx.post(f"{base}/playbooks/agent/episodes/learn",
                       json={"user_message": "save the upload", "trajectory": "answered 200, then crashed"}, timeout=5)
        assert r.status_code == 200
        jid = r.json()["learn_job_id"]
        assert wait_status(base, "agent", jid, "pending")["reflection"] is None
    finally:
        kill(first)  # SIGKILL: no graceful shutdown
    fake.reply(REFLECTION, CURATION)
    second, base2 = start_process({**db, **llm_env(fake)})
    try:
        job = wait_status(base2, "agent", jid, "completed")
        assert job["reflection"]["key_insight"] == "Persist work before acknowledging it"
        bullets = httpx.get(f"{base2}/playbooks/agent/bullets", timeout=5).json()["bullets"]
        assert [b["content"] for b in bullets] == ["Queue work durably before answering"]
    finally:
        log = output(second)
        kill(second)
    assert "Traceback" not in log, log


def test_job_running_when_the_server_dies_is_run_again(tmp_path: Path, fake: FakeLLM) -> None:
    db = {"ACE_DB_URL": f"sqlite:///{tmp_path / 'ace.db'}", "ACE_JOB_STALE_SECONDS": "1"}
    fake.reply(Delay(30, REFLECTION))  # the first server's reflector call hangs
    first, base = start_process({**db, **llm_env(fake)})
    try:
        jid = httpx.post(f"{base}/playbooks/agent/episodes/learn",
                         json={"user_message": "u", "trajectory": "t"}, timeout=5).json()["learn_job_id"]
        wait_status(base, "agent", jid, "running")
        wait_for(fake.chat_requests, timeout=20, message="the first server never called the model")
        assert fake.chat_requests(), "the first server never called the model"
    finally:
        kill(first)
    fake.reply(REFLECTION, CURATION)
    second, base2 = start_process(db | llm_env(fake))
    try:
        job = wait_status(base2, "agent", jid, "completed")
        assert job["attempts"] == 2
    finally:
        kill(second)
