"""One redaction step for everything stored, printed or logged (issue 14).

The configured secrets (exact values) and key-shaped text (`sk-...`, `Bearer ...`, `e2b_...`) never
reach the database (neither its file nor its WAL), a log record, or the CLI's output; NUL and lone
surrogates from models or program output are stored replaced, never refused. Ordinary bullets and
code pass unchanged, and fast.
"""

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlmodel import select

from core import playbook as P
from core.cli import main as ace_main
from core.redaction import (
    REDACTED,
    RedactingFilter,
    install_logging,
    redact,
    sanitize,
    scrub_for_storage,
    scrub_params,
)
from core.storage.db import read_session, row_writer, write_session
from core.storage.models import Episode, Event, LLMCall, utcnow
from tests.fake_llm import Status
from tests.scripted import add, cur, gen, refl

SHAPED_KEY = "sk-test-secret-key-never-logged"  # the fake_llm fixture's key
PLAIN_KEY = "corp-proxy-credential-0f3a9c77d2"  # not key-shaped: only its exact value can be found
SERVICE_TOKEN = "svc-token-5be1c0ffee-9d"
E2B_KEY = "e2b-looking-not-shaped-77aa11"
# these tests are about what is stored and printed, not isolation: a host where bubblewrap cannot run
# still runs them (with full isolation wherever it can)
RUN_ENV = {"ACE_ALLOW_UNISOLATED": "1"}
TESTS = "assert mean([1, 2, 3]) == 2\nassert mean([]) == 0\n"
GOOD = "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"

ORDINARY = [
    "Use sorted(xs, key=len) instead of a manual loop; it is stable.",
    "pitfalls: guard mean() against empty lists (ZeroDivisionError)",
    "def task_runner(ask_user=True):\n    return {'sk': 1, 'desk-top': 'bearer'}\n",
    "Keep the bearer of bad news short: raise ValueError early.",
    "pip install scikit-learn; import sklearn; see sk-learn docs",
    "e2b sandboxes start in 150 ms; e2b_ prefixes are ids",
    "Authorization: Bearer <token>",
    "naïve café — “quotes” and emoji 😀 stay as they are",
    "",
]


@pytest.fixture()
def secrets(settings_env: Any, db_url: str) -> Any:
    return settings_env(OPENAI_API_KEY=PLAIN_KEY, ACE_SERVICE_TOKEN=SERVICE_TOKEN, E2B_API_KEY=E2B_KEY)


# ------------------------------------------------------------------ redact()


def test_configured_secrets_and_key_shaped_text_are_replaced(secrets: Any) -> None:
    said = (f"key {PLAIN_KEY}, token={SERVICE_TOKEN}; e2b: {E2B_KEY}. Also sk-{'a1B2' * 6}, "
            f"BEARER {'x' * 16}, bearer\t{'Zz9-' * 5} and e2b_{'k' * 24}.")
    out = redact(said)
    for secret in (PLAIN_KEY, SERVICE_TOKEN, E2B_KEY, "a1B2" * 6, "x" * 16, "Zz9-" * 5, "k" * 24):
        assert secret not in out, out
    assert out.count(REDACTED) == 7 and out.startswith("key [redacted], token=[redacted]"), out
    assert redact(f"Incorrect API key provided: Bearer {SHAPED_KEY}") == "Incorrect API key provided: Bearer [redacted]"


def test_short_configured_values_and_ordinary_text_stay_as_they_are(settings_env: Any, db_url: str) -> None:
    settings_env(ACE_SERVICE_TOKEN="mean", OPENAI_API_KEY="x")  # too short to redact safely
    for t in ORDINARY + ["the mean of x is 2"]:
        assert redact(t) is t and scrub_for_storage(t) is t and sanitize(t) == t, t


def test_redaction_inside_json_text_keeps_it_json(secrets: Any) -> None:
    payload = {"stderr": f"line one\nsk-{'q' * 24}\n", "header": f'Authorization: "Bearer {"t" * 20}"',
               "msg": f"echo {PLAIN_KEY}", "quoted": SERVICE_TOKEN, "fine": "done 😀"}
    out = json.loads(scrub_for_storage(json.dumps(payload)))
    assert out == {"stderr": "line one\n[redacted]\n", "header": 'Authorization: "Bearer [redacted]"',
                   "msg": "echo [redacted]", "quoted": REDACTED, "fine": "done 😀"}


def test_nul_and_lone_surrogates_are_replaced_for_storage() -> None:
    assert scrub_for_storage("a\x00b\ud800c\udfffd 😀") == "a\ufffdb\ufffdc\ufffdd 😀"
    as_json = json.dumps({"out": "x\x00y", "reply": ["\udc80", {"k\ud83d": "ok \ud83d\ude00"}]})
    assert json.loads(scrub_for_storage(as_json)) == {"out": "x\ufffdy", "reply": ["\ufffd", {"k\ufffd": "ok 😀"}]}
    code = 'print("\\u0000 and \\ud800 are escapes in source code")'  # not JSON: no NUL in it
    assert scrub_for_storage(code) is code
    assert sanitize("tab\tnul\x00 \ud800") == "tab\tnul\ufffd \ufffd"


def test_statement_parameters_are_scrubbed_only_when_needed() -> None:
    clean = [("py-00001", "use a dict", 3, None, b"\x00bytes"), ("py-00002", "ok", 1, 2.5, b"")]
    assert scrub_params(clean) is clean and scrub_params({"a": "x"}) is not None
    dirty = scrub_params([("id", f"key sk-{'z' * 30}", 1), ("id2", "nul\x00", 2)])
    assert dirty == [("id", "key [redacted]", 1), ("id2", "nul\ufffd", 2)]
    assert scrub_params({"p0": "x\ud800", "p1": 5}) == {"p0": "x\ufffd", "p1": 5}


def test_long_text_is_redacted_and_plain_text_comes_back_untouched(secrets: Any) -> None:
    """How fast: `bench/bench_redaction.py`."""
    words = "cache retry parse json regex pandas index sort merge async await timeout encode".split()
    plain = " ".join(words[i % len(words)] for i in range(20_000))[:100_000]
    keyed = plain[:50_000] + f" sk-{'k' * 30} Bearer {'b' * 20} {PLAIN_KEY} " + plain[50_000:]
    for t in (keyed, json.dumps({"out": keyed})):
        assert PLAIN_KEY not in scrub_for_storage(t) and "k" * 30 not in scrub_for_storage(t)
    assert PLAIN_KEY not in redact(keyed) and redact(plain) is plain and scrub_for_storage(plain) is plain


# ------------------------------------------------------------------ logs


def test_every_log_record_is_redacted(secrets: Any, caplog: pytest.LogCaptureFixture) -> None:
    install_logging()
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("ace.test.redaction")
    log.warning("server said %s", f"Bearer {PLAIN_KEY}")
    log.warning(f"inline {SERVICE_TOKEN}")
    log.warning("as an object: %s / %r", ValueError(E2B_KEY), {"k": PLAIN_KEY})
    log.info("broken %s %s", PLAIN_KEY)  # a log call with too few args still says something, redacted
    try:
        raise RuntimeError(f"echoed {PLAIN_KEY}")
    except RuntimeError:
        log.exception("failed")
    handler_text = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    for secret in (PLAIN_KEY, SERVICE_TOKEN, E2B_KEY):
        assert secret not in handler_text and secret not in caplog.text
    assert "server said Bearer [redacted]" in handler_text and "RuntimeError: echoed [redacted]" in handler_text
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", (PLAIN_KEY,), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "plain [redacted]"


def test_the_access_log_keeps_no_query_string_and_uvicorn_can_still_format_it(
        caplog: pytest.LogCaptureFixture) -> None:
    from uvicorn.logging import AccessFormatter

    install_logging()
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                                             "/playbooks?token=abc123", "1.1", 401)
    (record,) = [r for r in caplog.records if r.name == "uvicorn.access"]
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /playbooks HTTP/1.1" 401 Unauthorized' and "abc123" not in caplog.text


# ------------------------------------------------------------------ the database


def test_every_write_path_stores_scrubbed_text(secrets: Any) -> None:
    P.get_or_create_playbook("redact")
    with write_session() as s:  # the ORM (SQLAlchemy's statements)
        s.add(LLMCall(role="generator", model="m", messages=[{"role": "user", "content": f"k {PLAIN_KEY}\x00"}],
                      error=f"HTTP 401: Bearer {SERVICE_TOKEN}"))
    with write_session() as s:  # text() with named parameters
        s.connection().execute(text("UPDATE llmcall SET response = :r"), {"r": f"e2b_{'a' * 24} \ud800"})
    ep = Episode(playbook_id="redact", task=f"task {PLAIN_KEY}")
    with row_writer() as w:  # the raw DBAPI path
        w.add([ep])
        w.insert(Event.__table__, [{"episode_id": ep.id, "seq": 1, "kind": "error", "started_at": utcnow(),  # type: ignore[attr-defined]
                                    "payload": {"message": f"sk-{'s' * 25}", "out": "a\x00b"}}])
        w.update(Episode.__table__, {"id": ep.id}, {"error": f"echo {E2B_KEY}"})  # type: ignore[attr-defined]
    with read_session() as s:
        call = s.exec(select(LLMCall)).one()
        episode = s.exec(select(Episode)).one()
        event = s.exec(select(Event)).one()
    assert call.messages == [{"role": "user", "content": "k [redacted]\ufffd"}]
    assert (call.error, call.response) == ("HTTP 401: Bearer [redacted]", "[redacted] \ufffd")
    assert (episode.task, episode.error) == ("task [redacted]", "echo [redacted]")
    assert event.payload == {"message": REDACTED, "out": "a\ufffdb"}


# ------------------------------------------------------------------ through the CLI


@pytest.mark.parametrize("key", [SHAPED_KEY, PLAIN_KEY])
def test_a_key_echoed_in_a_401_reaches_no_table_file_log_or_output(
        key: str, fake_llm: Any, settings_env: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    settings_env(OPENAI_API_KEY=key, ACE_SERVICE_TOKEN=SERVICE_TOKEN, E2B_API_KEY=E2B_KEY, **RUN_ENV)
    caplog.set_level(logging.DEBUG)
    (tmp_path / "tests.py").write_text(TESTS)
    monkeypatch.chdir(tmp_path)
    echo = f"Incorrect API key provided: Bearer {key}. Service token {SERVICE_TOKEN}, sandbox key {E2B_KEY}."
    fake_llm.reply(*[Status(401, echo)] * 4)
    capsys.readouterr()
    task = f"Write mean(xs); the service token is {SERVICE_TOKEN}"  # stored, sent, never redacted before storing
    code = ace_main(["run", task, "--tests", "tests.py", "--playbook", "secrets"])
    out, err = capsys.readouterr()
    assert code == 3, (out, err)
    assert fake_llm.requests and fake_llm.requests[0]["_auth"] == f"Bearer {key}", (out, err)  # really sent
    assert "[redacted]" in err, err
    with read_session() as s:  # the error was stored, redacted
        (ep,) = s.exec(select(Episode)).all()
        calls = s.exec(select(LLMCall)).all()
    assert ep.error and "[redacted]" in ep.error and calls and all("[redacted]" in (c.error or "") for c in calls)
    assert ep.task == "Write mean(xs); the service token is [redacted]"

    logged = caplog.text + "\n".join(logging.Formatter().format(r) for r in caplog.records)
    for secret in (key, SERVICE_TOKEN, E2B_KEY):
        assert secret not in out and secret not in err, (out, err)
        assert secret not in logged
    if not db_url.startswith("sqlite"):  # every file of the PostgreSQL cluster: tables, indexes, WAL
        pg = request.getfixturevalue("pg_server")
        with read_session() as s:
            s.connection().exec_driver_sql("CHECKPOINT")
        files = [f for f in (pg.folder / "data").rglob("*") if f.is_file()]
        for secret in (key, SERVICE_TOKEN, E2B_KEY):
            _assert_not_in_files(secret, files)
        return
    db_file = Path(db_url.removeprefix("sqlite:///"))
    for secret in (key, SERVICE_TOKEN, E2B_KEY):
        _assert_not_in_files(secret, _sqlite_files(db_file))
    with sqlite3.connect(db_file) as conn:  # the WAL's pages moved into the database file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for secret in (key, SERVICE_TOKEN, E2B_KEY):
        _assert_not_in_files(secret, _sqlite_files(db_file))


def _sqlite_files(db_file: Path) -> list[Path]:
    files = [f for f in (db_file, db_file.with_name(db_file.name + "-wal")) if f.exists()]
    assert db_file in files
    return files


def _assert_not_in_files(secret: str, files: list[Path]) -> None:
    assert files
    for f in files:
        data = f.read_bytes()
        for form in {secret.encode(), secret.encode("utf-16-le")}:
            assert form not in data, f"{secret!r} is in {f.name}"


def test_nul_and_lone_surrogates_from_a_model_and_a_program_are_stored_replaced(
        fake_llm: Any, settings_env: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings_env(**RUN_ENV)
    (tmp_path / "tests.py").write_text(TESTS)
    monkeypatch.chdir(tmp_path)
    program = 'import sys\nsys.stdout.write("out\\x00put\\n")\n' + GOOD
    reply = gen(program)
    reply["reasoning"] = "think\x00ing \ud800 done"
    fake_llm.reply(reply, refl("insight \x00 and \x00"), cur(add("Bullet with NUL \x00 and \ud83d surrogate")))
    code = ace_main(["run", "Write mean(xs)", "--tests", "tests.py", "--playbook", "nul"])
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    assert "out\ufffdput" in out and "insight \ufffd and \ufffd" in out  # printed, replaced, no crash
    with read_session() as s:
        (ep,) = s.exec(select(Episode)).all()
        events = {e.kind: e for e in s.exec(select(Event).where(Event.episode_id == ep.id))}
        responses = [c.response or "" for c in s.exec(select(LLMCall))]
    assert ep.status == "succeeded"
    assert responses and not any("\\u0000" in r or "\\ud8" in r for r in responses)  # the raw replies (JSON text)
    assert events["generate"].payload["reasoning"] == "think\ufffding \ufffd done"
    stdout = "".join(events["execute"].payload["execution"]["logs"]["stdout"])
    assert "out\ufffdput" in stdout
    assert [b.content for b in P.active_bullets("nul")] == ["Bullet with NUL \ufffd and \ufffd surrogate"], out
    with write_session() as s:  # nothing stored holds a NUL or a lone surrogate, whichever table
        tables = [t for t in inspect(s.connection()).get_table_names() if "fts" not in t]
        for t in tables:
            for row in s.connection().exec_driver_sql(f"SELECT * FROM {t}"):
                for v in row:
                    _assert_storable(v, t)


def _assert_storable(value: Any, where: str, column: bool = True) -> None:
    """No NUL and no lone surrogate in a stored value, nor in the strings of a JSON column (a raw reply
    kept as text inside one may still spell an escape: that is text, not a NUL)."""
    if isinstance(value, str):
        assert "\x00" not in value, where
        value.encode("utf-8")  # raises on a lone surrogate
        if column and value[:1] in "{[":
            try:
                parsed = json.loads(value)
            except ValueError:
                return
            _assert_storable(parsed, where, column=False)
    elif isinstance(value, list):
        for v in value:
            _assert_storable(v, where, column=False)
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_storable(k, where, column=False)
            _assert_storable(v, where, column=False)
