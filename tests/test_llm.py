import json
import time

import pytest
from pydantic import BaseModel
from sqlmodel import select

from core import config
from core.llm.client import LLMClient, LLMError, LLMNotConfigured, LLMOutputError, LLMTimeout, LLMUnavailable
from core.roles import CuratorOutput, GeneratorOutput, LLMCurator, LLMGenerator, ReflectorOutput
from core.storage.db import read_session
from core.storage.models import LLMCall
from tests.fake_llm import Delay, Endless, Status, Trickle, Truncated


class Answer(BaseModel):
    value: int


def calls() -> list[LLMCall]:
    with read_session() as s:
        return list(s.exec(select(LLMCall).order_by(LLMCall.id)))


def test_structured_output_uses_json_schema_and_logs_the_call(fake_llm) -> None:
    fake_llm.reply({"value": 42})
    r = LLMClient(backoff_base=0).structured("tester", [{"role": "user", "content": "answer"}], Answer, "ep-1")
    assert r.value.value == 42 and r.mode == "json_schema"
    req = fake_llm.chat_requests()[0]
    assert req["response_format"]["type"] == "json_schema"
    assert req["response_format"]["json_schema"]["schema"]["properties"]["value"]["type"] == "integer"
    assert req["model"] == "fake-model"
    (c,) = calls()
    assert c.role == "tester" and c.episode_id == "ep-1" and json.loads(c.response) == {"value": 42}
    assert c.prompt_tokens > 0 and c.completion_tokens > 0 and c.latency_ms > 0
    assert "sk-test-secret" not in json.dumps(c.messages) + (c.response or "")


def test_falls_back_to_json_mode_when_schema_is_rejected(fake_llm) -> None:
    fake_llm.reject_json_schema = True
    fake_llm.reply({"value": 7})
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.value.value == 7 and r.mode == "json_object"
    sent = fake_llm.chat_requests()[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert "JSON schema" in sent["messages"][0]["content"]
    assert [c.error is not None for c in calls()] == [True, False]
    # the working mode is remembered
    fake_llm.reply({"value": 8})
    assert LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer).mode == "json_object"


def test_repairs_invalid_json_once(fake_llm) -> None:
    fake_llm.reply("Sure! here it is: {value: forty}", "```json\n{\"value\": 40}\n```")
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.value.value == 40 and len(r.call_ids) == 2
    repair = fake_llm.chat_requests()[-1]["messages"]
    assert repair[-2]["role"] == "assistant" and "could not be used" in repair[-1]["content"]


def test_gives_up_after_one_repair_with_a_clear_error(fake_llm) -> None:
    fake_llm.reply("nope", {"value": "not a number"})
    with pytest.raises(LLMOutputError, match="not valid Answer JSON after one repair attempt: value"):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)


def test_retries_429_and_5xx_then_succeeds(fake_llm) -> None:
    fake_llm.reply(Status(429), Status(503), {"value": 1})
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.value.value == 1
    assert [c.error.split(":")[0] if c.error else None for c in calls()] == ["HTTP 429", "HTTP 503", None]


def test_retries_are_bounded(fake_llm) -> None:
    fake_llm.reply(Status(500), Status(500), Status(500), Status(500))
    with pytest.raises(LLMError, match="failed 3 times"):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)


def test_a_slow_reply_ends_at_the_call_deadline_and_is_not_resent(fake_llm, settings_env) -> None:
    settings_env(ACE_LLM_TIMEOUT="0.3")
    fake_llm.reply(Delay(1.0, {"value": 1}), {"value": 2})
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout, match="no usable reply within 0.3 s") as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 0.9
    assert len(fake_llm.chat_requests()) == 1 and err.value.spent.calls == 1
    assert "no reply within" in calls()[0].error


def test_unreachable_server_is_a_clear_error(db_url, settings_env) -> None:
    settings_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1", ACE_LLM_MAX_RETRIES="1")
    with pytest.raises(LLMUnavailable, match="no model server answers at http://127.0.0.1:9/v1") as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert err.value.spent.calls == 2


def test_not_configured_names_the_settings(db_url) -> None:
    config.reset_settings()
    with pytest.raises(LLMNotConfigured, match="OPENAI_API_KEY.*OPENAI_BASE_URL.*ACE_MODEL"):
        LLMClient()


def test_settings_public_view_hides_secrets(settings_env) -> None:
    s = settings_env(OPENAI_API_KEY="sk-very-secret", E2B_API_KEY="e2b-very-secret")
    shown = json.dumps(s.public())
    assert "very-secret" not in shown and "very-secret" not in repr(s)
    assert s.public()["openai_api_key"] == "set"


@pytest.mark.uncapped_ok
def test_streaming_replies_are_served(fake_llm) -> None:
    import openai

    fake_llm.reply("hello streaming world")
    client = openai.OpenAI(base_url=fake_llm.base_url, api_key="x", max_retries=0)
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello streaming world"


def test_roles_send_playbook_in_system_message_and_parse(fake_llm) -> None:
    llm = LLMClient(backoff_base=0)
    fake_llm.reply({"reasoning": "r", "bullet_ids": ["py-00001"], "code": "print(1)", "language": "python"})
    g = LLMGenerator(llm).generate("print one", "python", "**PLAYBOOK_BEGIN**\n[py-00001] ...\n**PLAYBOOK_END**", [])
    assert isinstance(g.value, GeneratorOutput) and g.value.code == "print(1)"
    sys_msg, user_msg = fake_llm.chat_requests()[-1]["messages"]
    assert "[py-00001]" in sys_msg["content"] and "[py-00001]" not in user_msg["content"]
    fake_llm.reply({"reasoning": "x", "operations": [{"type": "BOGUS"},
                                                     {"type": "ADD", "content": "c", "section": "Pitfalls"}]})
    c = LLMCurator(llm).curate("t", ReflectorOutput(), "", "failed")
    assert isinstance(c.value, CuratorOutput) and c.value.operations[0].section == "pitfalls"
    assert [d["op"] for d in c.value.dropped] == [{"type": "BOGUS"}] and c.calls == 1  # judged op by op


def test_every_request_carries_the_role_cap(fake_llm, settings_env) -> None:
    settings_env(ACE_MAX_TOKENS_CURATOR="321")
    fake_llm.reply({"value": 1}, {"value": 2}, {"value": 3})
    llm = LLMClient(backoff_base=0)
    llm.structured("curator", [{"role": "user", "content": "x"}], Answer)
    llm.structured("generator", [{"role": "user", "content": "x"}], Answer)
    llm.structured("expand", [{"role": "user", "content": "x"}], Answer, max_tokens=17)
    assert [r["max_tokens"] for r in fake_llm.chat_requests()] == [321, 2048, 17]
    assert [c.max_tokens for c in calls()] == [321, 2048, 17]


def test_the_working_mode_survives_a_new_process_and_is_retried_later(fake_llm) -> None:
    from datetime import timedelta

    from core.llm.client import reset_mode_cache
    from core.storage.db import write_session
    from core.storage.models import LLMEndpointMode

    fake_llm.reject_json_schema = True
    fake_llm.reply({"value": 1}, {"value": 2})
    LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    reset_mode_cache()  # what a new process knows: only the database
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.mode == "json_object" and r.calls == 1
    assert len(fake_llm.chat_requests()) == 3  # one refusal in all
    with write_session() as s:  # a day later the server may have learned json_schema
        row = s.get(LLMEndpointMode, (fake_llm.base_url.rstrip("/"), "fake-model"))
        assert row is not None and row.mode == "json_object"
        row.refused_at = row.refused_at - timedelta(hours=25)
    reset_mode_cache()
    fake_llm.reject_json_schema = False
    fake_llm.reply({"value": 3})
    assert LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer).mode == "json_schema"


def test_only_a_400_about_the_output_format_steps_down_a_mode(fake_llm) -> None:
    fake_llm.reply(Status(400, "this model's maximum context length is 8192 tokens"))
    with pytest.raises(LLMError, match="refused the request: HTTP 400: this model's maximum context") as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert not isinstance(err.value, LLMUnavailable)
    assert [r["response_format"]["type"] for r in fake_llm.chat_requests()] == ["json_schema"]


def test_a_key_echoed_by_the_server_is_never_stored_or_raised(fake_llm) -> None:
    fake_llm.reply(Status(401, "Incorrect API key provided: Bearer sk-test-secret-key-never-logged"))
    with pytest.raises(LLMUnavailable) as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert "never-logged" not in str(err.value) and "[redacted]" in str(err.value)
    assert "never-logged" not in (calls()[0].error or "")


def test_failed_requests_count_in_what_a_call_spent(fake_llm) -> None:
    fake_llm.reply("not json", "still not json")
    with pytest.raises(LLMOutputError) as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    spent = err.value.spent
    assert spent.calls == 2 and spent.completion_tokens > 0 and spent.latency_ms > 0
    assert err.value.raw == "still not json"
    assert [c.round for c in calls()] == [1, 2]


def test_a_reply_looping_to_the_cap_is_recognised_as_truncated(fake_llm) -> None:
    fake_llm.reply(Endless('{"value": 1, "more": [', '"again", '), Endless('{"value": 1, "more": [', '"x", '))
    with pytest.raises(LLMOutputError, match="truncated at 40 tokens") as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer, max_tokens=40)
    repair = fake_llm.chat_requests()[-1]["messages"]
    assert "cut off at 40 tokens" in repair[-1]["content"] and len(repair) == 2  # the cut text is not re-sent
    assert [c.finish_reason for c in calls()] == ["length", "length"] and err.value.spent.completion_tokens == 80


def test_a_truncated_reply_then_a_short_one_is_used(fake_llm) -> None:
    fake_llm.reply(Truncated('{"value": 1'), {"value": 2})
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.value.value == 2 and r.calls == 2


def test_retry_after_is_honoured(fake_llm) -> None:
    fake_llm.reply(Status(429, "slow down", {"Retry-After": "1"}), {"value": 5})
    t0 = time.monotonic()
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert r.value.value == 5 and 1.0 <= time.monotonic() - t0 < 2.5
    assert [c.retry for c in calls()] == [0, 1]


def test_a_retry_after_past_the_deadline_fails_at_once(fake_llm, settings_env) -> None:
    settings_env(ACE_LLM_TIMEOUT="2")
    fake_llm.reply(Status(429, "slow down", {"Retry-After": "60"}))
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout, match="asked to wait"):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 1.0


def test_a_trickling_server_cannot_outlast_the_deadline(fake_llm, settings_env) -> None:
    settings_env(ACE_LLM_TIMEOUT="0.6")
    fake_llm.reply(Trickle({"value": 1, "pad": "x" * 200}, every_s=0.05))
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 1.2


def test_the_episode_budget_bounds_a_call(fake_llm) -> None:
    from core.llm.deadline import episode_budget

    fake_llm.reply(Delay(2.0, {"value": 1}))
    t0 = time.monotonic()
    with episode_budget(0.4), pytest.raises(LLMTimeout):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 1.0


def test_a_stalled_body_cannot_outlast_the_deadline(fake_llm, settings_env) -> None:
    from tests.fake_llm import Stall

    settings_env(ACE_LLM_TIMEOUT="1")
    fake_llm.reply(Delay(0.5, Stall(30, {"value": 1, "pad": "x" * 400})))
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 1.6


class RawServer:
    """A TCP server answering each connection with `respond(sock, request_bytes)`: for replies no
    well-behaved HTTP server would send."""

    def __init__(self, respond) -> None:  # type: ignore[no-untyped-def]
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:  # type: ignore[no-untyped-def]
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                          b"0"))
        while len(body) < length:
            body += conn.recv(65536)
        try:
            self.respond(conn, head)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def raw_server(db_url, settings_env):  # type: ignore[no-untyped-def]
    servers: list[RawServer] = []

    def start(respond, **env: str) -> RawServer:  # type: ignore[no-untyped-def]
        server = RawServer(respond)
        servers.append(server)
        settings_env(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-test-secret-key-never-logged",
                     ACE_MODEL="raw", ACE_LLM_MAX_RETRIES="1", **env)
        from core.llm.client import reset_mode_cache

        reset_mode_cache()
        return server

    yield start
    for s in servers:
        s.close()


def test_headers_sent_a_line_at_a_time_cannot_outlast_the_deadline(raw_server) -> None:
    def slow_headers(conn, head) -> None:  # type: ignore[no-untyped-def]
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for i in range(100):
            conn.sendall(f"X-Slow-{i}: 1\r\n".encode())
            time.sleep(0.1)

    raw_server(slow_headers, ACE_LLM_TIMEOUT="1")
    t0 = time.monotonic()
    with pytest.raises(LLMTimeout):
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert time.monotonic() - t0 < 1.6


def test_a_non_json_reply_echoing_the_key_is_never_quoted(raw_server) -> None:
    def echo(conn, head) -> None:  # type: ignore[no-untyped-def]
        auth = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"authorization"))
        body = b"x" * 150 + auth + b" and more"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    raw_server(echo)
    with pytest.raises(LLMError) as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert "not a chat completion" in str(err.value) and "sk-test" not in str(err.value)
    assert all("sk-test" not in (c.error or "") for c in calls()) and len(calls()) == 2  # retried once


def test_a_connection_dropped_mid_reply_is_retried_then_a_clear_error(raw_server) -> None:
    def drop(conn, head) -> None:  # type: ignore[no-untyped-def]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"choi")

    raw_server(drop)
    with pytest.raises(LLMError, match="failed 2 times.*connection broke") as err:
        LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "x"}], Answer)
    assert not isinstance(err.value, LLMUnavailable)


def test_a_lone_surrogate_from_an_earlier_reply_does_not_break_the_next_request(fake_llm) -> None:
    fake_llm.reply({"value": 1})
    r = LLMClient(backoff_base=0).structured("t", [{"role": "user", "content": "insight: x\ud800y\x00z"}], Answer)
    assert r.value.value == 1 and r.calls == 1
    assert "\ufffd" in fake_llm.chat_requests()[0]["messages"][0]["content"]
