"""The fake model server itself, through the real `openai` client: caps, truncation, errors, slow bodies."""

import json
import threading
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fake_llm import Delay, Endless, FakeLLM, Finish, Stall, Status, Trickle, Truncated
from tests.support import wait_for

MESSAGES = [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "x" * 400}]


@pytest.fixture()
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM().start()
    yield f
    f.stop()


def client(fake: FakeLLM, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=timeout)


def chat(fake: FakeLLM, timeout: float = 5.0, **kwargs):
    return client(fake, timeout).chat.completions.create(model="m", messages=MESSAGES, **kwargs)


# ------------------------------------------------------------------ token caps


def test_a_reply_within_the_cap_is_untouched_and_usage_is_realistic(fake: FakeLLM) -> None:
    fake.reply({"answer": 42})
    resp = chat(fake, max_tokens=50)
    assert resp.choices[0].message.content == '{"answer": 42}'
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 4 + 100  # ~4 characters a token, per message
    assert resp.usage.completion_tokens == 3 and resp.usage.total_tokens == 107


def test_a_reply_longer_than_the_cap_is_cut_with_finish_reason_length(fake: FakeLLM) -> None:
    fake.reply("word " * 200, {"k": "v" * 400})
    resp = chat(fake, max_tokens=10)
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == ("word " * 200)[:40]
    assert resp.usage.completion_tokens == 10
    resp = chat(fake, max_completion_tokens=20)  # the newer name counts the same
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 20
    assert resp.choices[0].message.content == '{"k": "' + "v" * 73


def test_caps_are_recorded_and_uncapped_requests_listed(fake: FakeLLM) -> None:
    fake.reply("a", "b", "c")
    chat(fake, max_tokens=64)
    chat(fake, max_tokens=64, max_completion_tokens=32)
    fake.assert_all_capped()
    chat(fake)
    assert fake.caps == [64, 32, None]
    assert [r["messages"] for r in fake.uncapped] == [MESSAGES]
    with pytest.raises(AssertionError, match="1 of 3 chat requests carried no token cap"):
        fake.assert_all_capped()


def test_reject_uncapped_answers_400(fake: FakeLLM) -> None:
    fake.reject_uncapped = True
    fake.reply("capped is fine")
    with pytest.raises(openai.BadRequestError, match="max_tokens is required"):
        chat(fake)
    assert chat(fake, max_tokens=8).choices[0].message.content == "capped is fine"


# ------------------------------------------------------------------ endless and truncated replies


def test_endless_array_runs_to_the_cap(fake: FakeLLM) -> None:
    fake.reply(Endless('{"reasoning": "x", "bullet_ids": [', '"1", ', "]}"))
    resp = chat(fake, max_tokens=100)
    content = resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 100
    assert len(content) == 400 and content.startswith('{"reasoning": "x", "bullet_ids": ["1", "1", ')
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_endless_without_a_cap_runs_to_the_servers_own_limit(fake: FakeLLM) -> None:
    fake.server_cap = 2000
    fake.reply(Endless("[", "1, "), lambda req: Endless("", "ab"))
    resp = chat(fake)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 2000
    assert len(resp.choices[0].message.content) == 8000
    assert chat(fake, max_tokens=7).choices[0].message.content == "ab" * 14  # a callable may answer Endless
    assert len(fake.uncapped) == 1


def test_truncated_and_finish_set_the_finish_reason(fake: FakeLLM) -> None:
    fake.reply(Truncated('{"code": "def f('), Finish({"a": 1}, "content_filter"), Truncated("z" * 100))
    resp = chat(fake, max_tokens=100)
    assert resp.choices[0].message.content == '{"code": "def f(' and resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 4
    resp = chat(fake, max_tokens=100)
    assert resp.choices[0].message.content == '{"a": 1}' and resp.choices[0].finish_reason == "content_filter"
    resp = chat(fake, max_tokens=5)  # the cap still cuts
    assert resp.choices[0].message.content == "z" * 20 and resp.usage.completion_tokens == 5


def test_misbehaving_content_is_sent_as_given(fake: FakeLLM) -> None:
    prose = "Sure! The problem is that the list is empty, so you should check it first."
    fenced = "Here you go:\n```python\ndef f(x):\n    return x\n```\nHope this helps."
    nulls = {"operations": [{"type": "ADD", "section": None, "content": None}]}
    fake.reply(prose, fenced, nulls)
    assert chat(fake, max_tokens=200).choices[0].message.content == prose
    assert chat(fake, max_tokens=200).choices[0].message.content == fenced
    assert json.loads(chat(fake, max_tokens=200).choices[0].message.content) == nulls


def test_streaming_carries_the_cut_and_finish_reason(fake: FakeLLM) -> None:
    fake.reply(Endless("[", "1, "))
    chunks = list(chat(fake, max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ("[" + "1, " * 20)[:40]
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10


# ------------------------------------------------------------------ errors


def test_status_carries_headers_and_an_openai_error_body(fake: FakeLLM) -> None:
    fake.reply(Status(429, "slow down", {"Retry-After": "1"}), Status(400, "bad things"), Status(503))
    with pytest.raises(openai.RateLimitError) as rate:
        chat(fake, max_tokens=5)
    assert rate.value.response.headers["retry-after"] == "1"
    assert rate.value.body["message"] == "slow down"
    with pytest.raises(openai.BadRequestError) as bad:
        chat(fake, max_tokens=5)
    assert bad.value.body == {"message": "bad things", "type": "invalid_request_error", "param": None,
                              "code": None}
    with pytest.raises(openai.InternalServerError, match="scripted error"):
        chat(fake, max_tokens=5)


def test_rejected_response_formats_name_themselves(fake: FakeLLM) -> None:
    fake.reject_json_schema = fake.reject_json_object = True
    fake.reply("plain works")
    schema = {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="response_format json_schema"):
        chat(fake, max_tokens=5, response_format=schema)
    with pytest.raises(openai.BadRequestError, match="response_format json_object"):
        chat(fake, max_tokens=5, response_format={"type": "json_object"})
    assert chat(fake, max_tokens=5).choices[0].message.content == "plain works"
    assert fake.pending == 0 and len(fake.chat_requests()) == 3  # refusals take no scripted reply


# ------------------------------------------------------------------ slow servers


def test_trickle_defeats_a_per_read_timeout(fake: FakeLLM) -> None:
    fake.reply(Trickle({"code": "pass"}, every_s=0.02, chunk=12))
    t0 = time.monotonic()
    raw = client(fake, timeout=0.15).chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, max_tokens=10)
    took = time.monotonic() - t0
    size = int(raw.headers["content-length"])
    assert len(raw.http_response.content) == size
    expected = -(-size // 12) * 0.02  # about 0.4 s: longer than the 0.15 s timeout, which counts per read
    assert expected > 0.3 and expected * 0.9 <= took <= expected * 2 + 0.5
    assert raw.parse().choices[0].message.content == '{"code": "pass"}'


def test_trickle_stops_when_the_client_hangs_up(fake: FakeLLM) -> None:
    fake.reply(Trickle("x" * 100, every_s=0.5))
    with pytest.raises(openai.APITimeoutError):
        chat(fake, timeout=0.2, max_tokens=50)
    wait_for(lambda: fake.abandoned == 1, timeout=1.0, message="the trickle kept writing to nobody")


def test_stall_sends_half_then_waits(fake: FakeLLM) -> None:
    fake.reply(Stall(0.3, {"a": 1}), Stall(5.0, {"a": 2}))
    t0 = time.monotonic()
    assert chat(fake, max_tokens=10).choices[0].message.content == '{"a": 1}'
    assert 0.3 <= time.monotonic() - t0 < 3.0
    with pytest.raises(openai.APITimeoutError):
        chat(fake, timeout=0.2, max_tokens=10)
    wait_for(lambda: fake.abandoned == 1, timeout=1.0, message="the stall outlived its client")


def test_delay_gives_up_when_the_client_does_and_on_stop(fake: FakeLLM) -> None:
    fake.reply(Delay(5.0, "late"), Delay(0.05, "on time"))
    with pytest.raises(openai.APITimeoutError):
        chat(fake, timeout=0.2, max_tokens=10)
    wait_for(lambda: fake.abandoned == 1, timeout=1.0)
    assert chat(fake, max_tokens=10).choices[0].message.content == "on time"
    fake.reply(Trickle("x" * 1000, every_s=1.0))
    t0 = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        with client(fake) as c:
            threading.Timer(0.2, fake.stop).start()
            c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=500)
    assert time.monotonic() - t0 < 3.0  # not the 1000 s the trickle would take
