"""core.service.client against a real uvicorn on 127.0.0.1 (sync) and the ASGI app (async)."""

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.service.app import create_app
from core.service.client import ACEClient, ACEConnectionError, ACEHTTPError, ACETimeout, AsyncACEClient, LearnJobFailed
from tests.test_service_support import ThreadServer, free_port


@pytest.fixture()
def server(db_url: str) -> Iterator[ThreadServer]:
    with ThreadServer(create_app(start_worker=False)) as srv:
        yield srv


def test_sync_client_over_real_http(server: ThreadServer) -> None:
    with ACEClient(server.base_url, timeout=5) as ace:
        assert ace.health()["status"] == "ok"
        ace._call("POST", "/playbooks/bot/bullets", json={"content": "Validate JSON input before use"})
        prompt = ace.embed_prompt("bot", "parse the JSON input", k=5)
        assert "Validate JSON input before use" in prompt and "**PLAYBOOK_BEGIN**" in prompt
        assert [b["content"] for b in ace.retrieve("bot", "JSON")] == ["Validate JSON input before use"]
        jid = ace.learn("bot", user_message=prompt, trajectory="ran fine", evaluation="all tests passed")
        job = ace.get_learn_job("bot", jid)
        assert job["id"] == jid and job["status"] == "pending"
        with pytest.raises(ACETimeout, match="still pending"):
            ace.wait_for_learn("bot", jid, timeout=0.3, poll=0.1)


def test_errors_are_clear(server: ThreadServer) -> None:
    with ACEClient(server.base_url, timeout=5) as ace:
        with pytest.raises(ACEHTTPError) as e:
            ace.embed_prompt("bad id!", "x")
        assert e.value.status_code == 422 and "invalid playbook id" in str(e.value)
        with pytest.raises(ACEHTTPError) as e:
            ace.get_learn_job("bot", "job-missing")
        assert e.value.status_code == 404 and e.value.detail == "Learn job not found"
        with pytest.raises(ACEHTTPError, match="body.k"):
            ace.embed_prompt("bot", "x", k=-3)
    with ACEClient(f"http://127.0.0.1:{free_port()}", timeout=2) as down:
        with pytest.raises(ACEConnectionError, match="cannot reach the ACE service"):
            down.embed_prompt("bot", "x")


def test_token_is_sent(db_url: str, settings_env: Any) -> None:
    settings_env(ACE_SERVICE_TOKEN="tok-123")
    with ThreadServer(create_app(start_worker=False)) as srv:
        with ACEClient(srv.base_url, token="nope") as bad, pytest.raises(ACEHTTPError) as e:
            bad.embed_prompt("bot", "x")
        assert e.value.status_code == 401
        with ACEClient(srv.base_url, token="tok-123") as good:
            assert good.embed_prompt("bot", "x").startswith("x")


def test_wait_for_learn_raises_on_failure(db_url: str) -> None:
    from core import jobs

    with ThreadServer(create_app(start_worker=False)) as srv, ACEClient(srv.base_url) as ace:
        jid = ace.learn("bot", "task", "trajectory")  # no model configured: the job fails
        while (job := jobs.claim("test")) is not None:
            jobs.run_one(job)
        with pytest.raises(LearnJobFailed, match="No language model is configured") as e:
            ace.wait_for_learn("bot", jid, timeout=5, poll=0.05)
        assert e.value.job["status"] == "failed"
        assert ace.wait_for_learn("bot", jid, raise_on_failure=False)["status"] == "failed"
        assert ace.retry_learn_job("bot", jid)["status"] == "pending"


def test_async_client(db_url: str) -> None:
    app = create_app(start_worker=False)

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with AsyncACEClient("http://ace.test", transport=transport) as ace:
            assert (await ace.health())["status"] == "ok"
            prompt = await ace.embed_prompt("abot", "hello", k=3)
            assert prompt.startswith("hello") and "**PLAYBOOK_END**" in prompt
            jid = await ace.learn("abot", user_message=prompt, trajectory="t", ground_truth="42")
            assert (await ace.get_learn_job("abot", jid))["status"] == "pending"
            with pytest.raises(ACETimeout):
                await ace.wait_for_learn("abot", jid, timeout=0.2, poll=0.05)
            with pytest.raises(ACEHTTPError) as e:
                await ace.retry_learn_job("abot", jid)
            assert e.value.status_code == 409

    asyncio.run(run())
