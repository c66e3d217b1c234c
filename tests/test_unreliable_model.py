"""A weak, slow or misbehaving model never aborts an episode (issue 13): an unusable Generator reply is
a failed attempt, an unusable Reflector or Curator reply skips learning and keeps the verdict, bullet
ids the model invents are dropped and counted, the Curator's ops are judged one by one, and the
counters (attempts, tokens, model time, cost) count every call, failed ones too.

Each case runs through a `Driver`: `scripted` answers with in-process roles (tests/scripted.py), so
the counters can be checked to the token. An `http` driver (the real client against the fake server's
misbehaving replies) can join `DRIVERS` and run the same cases: it only has to turn the same script
(reply dicts and `Fail`s) into fake-server replies and run with roles from settings.
"""

import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol, cast

import pytest
from sqlmodel import select

from core import config
from core import playbook as P
from core.cli import main as ace_main
from core.episodes.spec import EpisodeResult, Roles
from core.llm.errors import LLMTimeout, LLMUnavailable
from core.loop import TaskSpec, episode_events, learn, run_episode
from core.storage.db import read_session
from core.storage.models import Delta, DeltaOp, Episode, Event, Reflection
from tests.fake_llm import Delay, Endless, Status
from tests.scripted import (
    COMPLETION_TOKENS,
    COST,
    LATENCY_MS,
    PROMPT_TOKENS,
    Fail,
    Scripted,
    Slow,
    add,
    cur,
    gen,
    refl,
    scripted_roles,
    timed_out,
    truncated,
    unreachable,
)

SANDBOX_MODES = ("forkserver",)  # one sandbox mode: these cases are about the loop, not isolation
TESTS = "assert mean([1, 2, 3]) == 2\nassert mean([]) == 0\n"
GOOD = "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"
BAD = "def mean(xs):\n    return sum(xs) / len(xs)\n"
TASK = "Write mean(xs), 0 for an empty list"
GOOD_TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS  # what one good scripted answer spent


# ------------------------------------------------------------------ drivers


class Driver(Protocol):
    name: str
    exact: bool  # the counters are known to the token (scripted); an HTTP driver checks them loosely

    def script(self, *, generator: Sequence[Scripted] = (), reflector: Sequence[Scripted] = (),
               curator: Sequence[Scripted] = ()) -> None: ...

    def run(self, spec: TaskSpec) -> EpisodeResult: ...

    def cli(self, *args: str) -> tuple[int, str, str]: ...

    def learn(self, playbook_id: str, user_message: str, trajectory: str, **kw: Any) -> dict[str, Any]: ...


class ScriptedDriver:
    """In-process roles; the CLI gets them through `Roles.from_settings`."""

    name, exact = "scripted", True

    def __init__(self, sandbox: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.sandbox, self.monkeypatch, self.capsys = sandbox, monkeypatch, capsys
        self.roles: Any = None

    def script(self, *, generator: Sequence[Scripted] = (), reflector: Sequence[Scripted] = (),
               curator: Sequence[Scripted] = ()) -> None:
        self.roles = scripted_roles(generator, reflector, curator)

    def run(self, spec: TaskSpec) -> EpisodeResult:
        return run_episode(spec, roles=self.roles, sandbox=self.sandbox)

    def cli(self, *args: str) -> tuple[int, str, str]:
        roles = self.roles
        self.monkeypatch.setattr(Roles, "from_settings", classmethod(lambda cls, settings=None: roles))
        return self.run_cli(args)

    def run_cli(self, args: Sequence[str]) -> tuple[int, str, str]:
        """`ace` with no stdin; (exit code, stdout, stderr)."""
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
        self.capsys.readouterr()
        code = ace_main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def learn(self, playbook_id: str, user_message: str, trajectory: str, **kw: Any) -> dict[str, Any]:
        return learn(playbook_id, user_message, trajectory, roles=self.roles, **kw)


class HttpDriver(ScriptedDriver):
    """The real roles and client against the fake server: each scripted answer becomes the replies the
    server gives to every request of that call (a truncated reply twice: the client asks once more for a
    shorter one), in the order the episode makes its calls (generator, reflector, curator)."""

    name, exact = "http", False
    CALL_TIMEOUT_S = 1.0

    def __init__(self, fake: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]):
        super().__init__(sandbox, monkeypatch, capsys)
        self.fake = fake
        monkeypatch.setenv("ACE_LLM_TIMEOUT", str(self.CALL_TIMEOUT_S))
        config.reset_settings()

    def script(self, *, generator: Sequence[Scripted] = (), reflector: Sequence[Scripted] = (),
               curator: Sequence[Scripted] = ()) -> None:
        self.fake._queue.clear()
        for item in [*generator, *reflector, *curator]:
            self.fake.reply(*self.replies(item))

    def replies(self, item: Scripted) -> list[Any]:
        if isinstance(item, Slow):
            first, *rest = self.replies(item.reply)
            return [Delay(item.seconds, first), *rest]
        if isinstance(item, Fail):
            if issubclass(item.error, LLMUnavailable):
                return [Status(401, "invalid api key")]
            if issubclass(item.error, LLMTimeout):
                return [Delay(self.CALL_TIMEOUT_S + 1.0, gen("print('too late')"))]
            prefix = (item.raw or '{"reasoning": "').rstrip('"') + '"'
            return [Endless(prefix, ', "1"'), Endless(prefix, ', "1"')]  # cut at the cap, and again when asked
        reply = dict(item)
        if "dropped" in reply:  # ops the role's parsing is to drop: sent among the others
            reply["operations"] = [d["op"] for d in reply.pop("dropped")] + list(reply.get("operations", []))
        return [reply]

    def run(self, spec: TaskSpec) -> EpisodeResult:
        return run_episode(spec, sandbox=self.sandbox)

    def cli(self, *args: str) -> tuple[int, str, str]:
        return self.run_cli(args)

    def learn(self, playbook_id: str, user_message: str, trajectory: str, **kw: Any) -> dict[str, Any]:
        return learn(playbook_id, user_message, trajectory, **kw)


DRIVERS = ("scripted", "http")


@pytest.fixture(params=DRIVERS)
def drive(request: pytest.FixtureRequest, sb: Any, db_url: str, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Iterator[Driver]:
    if request.param == "scripted":
        yield ScriptedDriver(sb, monkeypatch, capsys)
    else:
        yield HttpDriver(request.getfixturevalue("fake_llm"), sb, monkeypatch, capsys)


def roles_of(d: Driver) -> Any:
    return cast(ScriptedDriver, d).roles


# ------------------------------------------------------------------ what was stored


def events(episode_id: str, kind: Optional[str] = None) -> list[Event]:
    return [e for e in episode_events(episode_id) if e.kind != "output" and (kind is None or e.kind == kind)]


def kinds(episode_id: str) -> list[tuple[str, Optional[int]]]:
    return [(e.kind, e.attempt) for e in events(episode_id)]


def episode(episode_id: str) -> Episode:
    with read_session() as s:
        ep = s.get(Episode, episode_id)
        assert ep is not None
        return ep


def deltas(episode_id: str) -> list[Delta]:
    with read_session() as s:
        return list(s.exec(select(Delta).where(Delta.episode_id == episode_id)))


def skipped_reason(episode_id: str) -> str:
    (apply,) = events(episode_id, "apply")
    assert apply.payload["status"] == "skipped" and apply.payload["delta_id"] is None, apply.payload
    return str(apply.payload["reason"])


def lines(out: str) -> dict[str, str]:
    """`ace run`'s trace lines by their kind tag (`[apply]`), the last of each kind."""
    return {line.split("]")[0] + "]": line for line in out.splitlines() if line.startswith("[")}


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec(**{"task": TASK, "tests": TESTS, "playbook_id": "unreliable", "max_iterations": 3, **kw})


# ------------------------------------------------------------------ an unusable Generator reply


def test_unusable_first_reply_then_good_code_passes_on_attempt_two(drive: Driver) -> None:
    cut = truncated()
    drive.script(generator=[cut, gen(GOOD)], reflector=[refl("guard empty lists")],
                 curator=[cur(add("Guard mean() against empty lists"))])
    r = drive.run(spec())
    assert (r.status, r.success, r.attempts, r.learning_skipped) == ("succeeded", True, 2, None)
    assert kinds(r.episode_id) == [("route", None), ("generate", 1), ("generate", 2), ("execute", 2),
                                   ("evaluate", 2), ("reflect", None), ("curate", None), ("apply", None)]
    first = events(r.episode_id, "generate")[0].payload
    assert first["error_type"] == "LLMOutputError" and "truncated at" in first["error"]
    assert first["response"] and "code" not in first  # the raw reply kept; nothing ran
    ep = episode(r.episode_id)
    assert (ep.status, ep.success, ep.attempts) == ("succeeded", True, 2)
    assert [b.content for b in P.active_bullets("unreliable")] == ["Guard mean() against empty lists"]
    if drive.exact:  # the failed call's two requests count like the good ones
        assert first["response"] == cut.raw
        assert first["prompt_tokens"] == 120 and first["completion_tokens"] == 64 and first["calls"] == 2
        assert ep.tokens == cut.spent.tokens + 3 * GOOD_TOKENS
        assert ep.llm_ms == pytest.approx(cut.spent.latency_ms + 3 * LATENCY_MS)
        assert ep.cost == pytest.approx(cut.spent.cost + 3 * COST)
        # the second attempt's prompt says why the first could not be used
        (previous,) = roles_of(drive).generator.calls[1]["previous"]
        assert previous.code == "" and not previous.passed and "could not be used" in previous.feedback
        assert "truncated at" in previous.feedback
        # the Reflector saw both attempts, the unusable one too
        assert [a.number for a in roles_of(drive).reflector.calls[0]["attempts"]] == [1, 2]


def test_all_replies_unusable_fail_the_episode_and_skip_learning(drive: Driver) -> None:
    drive.script(generator=[truncated(), timed_out()])
    r = drive.run(spec(max_iterations=2))
    assert (r.status, r.success, r.attempts, r.code) == ("failed", False, 2, None)
    assert r.learning_skipped == "no attempt produced code"
    assert kinds(r.episode_id) == [("route", None), ("generate", 1), ("generate", 2), ("apply", None)]
    assert skipped_reason(r.episode_id) == "no attempt produced code"
    assert [e.payload["error_type"] for e in events(r.episode_id, "generate")] == ["LLMOutputError", "LLMTimeout"]
    ep = episode(r.episode_id)
    assert (ep.status, ep.success, ep.attempts, ep.error) == ("failed", False, 2, None)
    assert deltas(r.episode_id) == []
    if drive.exact:
        assert ep.tokens == 184 and ep.llm_ms == pytest.approx(30_250.0) and ep.cost == pytest.approx(0.002)


def test_a_reply_without_code_is_a_failed_attempt(drive: Driver) -> None:
    if not drive.exact:
        pytest.skip("over HTTP the role's parsing refuses a reply without code, and the client's repair round "
                    "asks again within the same attempt")
    drive.script(generator=[gen("   "), gen(GOOD)], reflector=[refl()], curator=[cur()])
    r = drive.run(spec())
    assert (r.status, r.attempts) == ("succeeded", 2)
    first = events(r.episode_id, "generate")[0].payload
    assert first["error"] == "the reply held no code" and [e.attempt for e in events(r.episode_id, "execute")] == [2]


# ------------------------------------------------------------------ Reflector and Curator failures


@pytest.mark.parametrize("code,status,exit_code", [(GOOD, "succeeded", 0), (BAD, "failed", 1)])
def test_reflector_failure_keeps_the_verdict_and_skips_learning(drive: Driver, code: str, status: str,
                                                                exit_code: int, tmp_path: Path) -> None:
    drive.script(generator=[gen(code)], reflector=[truncated()])
    r = drive.run(spec(max_iterations=1))
    assert (r.status, r.success, r.attempts) == (status, status == "succeeded", 1)
    assert kinds(r.episode_id)[-2:] == [("reflect", None), ("apply", None)]
    reflect = events(r.episode_id, "reflect")[0].payload
    assert reflect["error_type"] == "LLMOutputError" and reflect["response"]
    reason = skipped_reason(r.episode_id)
    assert reason.startswith("the Reflector's reply could not be used:") and "truncated" in reason
    ep = episode(r.episode_id)
    assert (ep.status, ep.success, ep.attempts, ep.error) == (status, status == "succeeded", 1, None)
    assert deltas(r.episode_id) == [] and ep.finished_at is not None
    if drive.exact:
        assert ep.tokens == GOOD_TOKENS + 184 and ep.cost == pytest.approx(COST + 0.002)
    # the same through `ace run`: the verdict's exit code, and why nothing was learned
    drive.script(generator=[gen(code)], reflector=[truncated()])
    tests = tmp_path / "tests.py"
    tests.write_text(TESTS)
    rc, out, err = drive.cli("run", TASK, "--tests", str(tests), "--playbook", "unreliable", "--max-iterations", "1")
    assert rc == exit_code, err
    assert "[reflect]" in out and "reply unusable" in out
    assert "learning skipped: the Reflector's reply could not be used" in lines(out)["[apply]"]
    assert f": {status} after 1 attempt(s); learning skipped:" in out


def test_curator_failure_keeps_the_reflection_and_the_verdict(drive: Driver) -> None:
    drive.script(generator=[gen(BAD), gen(GOOD)], reflector=[refl("guard empty lists")], curator=[timed_out()])
    r = drive.run(spec())
    assert (r.status, r.success, r.attempts) == ("succeeded", True, 2)
    assert skipped_reason(r.episode_id).startswith("the Curator's reply could not be used:")
    curate = events(r.episode_id, "curate")[0].payload
    assert curate["error_type"] == "LLMTimeout" and curate["latency_ms"] > 0
    with read_session() as s:
        assert s.exec(select(Reflection)).one().key_insight == "guard empty lists"
    assert deltas(r.episode_id) == [] and P.active_bullets("unreliable") == []
    ep = episode(r.episode_id)
    assert (ep.status, ep.success, ep.attempts) == ("succeeded", True, 2)
    assert ep.llm_ms >= curate["latency_ms"]  # the timed-out call's time counts
    if drive.exact:
        assert ep.llm_ms == pytest.approx(3 * LATENCY_MS + 30_000.0)


# ------------------------------------------------------------------ could not run


def test_no_model_reachable_means_the_episode_could_not_run(drive: Driver) -> None:
    drive.script(generator=[unreachable()])
    r = drive.run(spec())
    assert (r.status, r.success, r.attempts) == ("error", None, 0)
    assert (r.error or "").startswith("generate failed: generator: ")
    assert [k for k, _ in kinds(r.episode_id)] == ["route", "error"]
    ep = episode(r.episode_id)
    assert (ep.status, ep.attempts) == ("error", 0)
    drive.script(generator=[unreachable()])
    rc, out, err = drive.cli("run", TASK, "--playbook", "unreliable")
    assert rc == 3 and "error after 0 attempt(s)" in out and "generate failed" in err


def test_model_gone_mid_episode_counts_the_attempts_made(drive: Driver, tmp_path: Path) -> None:
    drive.script(generator=[gen(BAD), unreachable()])
    r = drive.run(spec())
    assert (r.status, r.attempts) == ("error", 1)
    ep = episode(r.episode_id)
    assert (ep.status, ep.attempts) == ("error", 1)  # the CLI's "after N attempt(s)" is the row's
    if drive.exact:
        assert ep.tokens == GOOD_TOKENS and ep.cost == pytest.approx(COST)
    drive.script(generator=[gen(BAD), unreachable()])
    tests = tmp_path / "tests.py"
    tests.write_text(TESTS)
    rc, out, _ = drive.cli("run", TASK, "--tests", str(tests), "--playbook", "unreliable")
    assert rc == 3 and ": error after 1 attempt(s)" in out


def test_learn_from_a_trajectory_still_fails_when_the_reflector_does(drive: Driver) -> None:
    drive.script(reflector=[truncated()])
    with pytest.raises(Exception) as raised:
        drive.learn("agent", "sort the records", "ran sorted(records)", evaluation="passed")
    assert "truncated" in str(raised.value)
    with read_session() as s:
        ep = s.exec(select(Episode).where(Episode.mode == "learn")).one()
    assert ep.status == "error" and (ep.error or "").startswith("reflect failed")
    reflect = events(ep.id, "reflect")[0].payload
    assert reflect["error_type"] == "LLMOutputError" and reflect["response"]  # the raw reply is kept
    if drive.exact:
        assert ep.tokens == 184


# ------------------------------------------------------------------ honest ids


def seed(playbook_id: str = "unreliable") -> list[str]:
    P.apply_delta(playbook_id, [{"type": "ADD", "section": "pitfalls", "content": "Guard mean against an empty list"},
                                {"type": "ADD", "section": "style", "content": "Name functions as the task says"}])
    return [b.id for b in P.active_bullets(playbook_id)]


def test_invented_bullet_ids_are_dropped_counted_and_never_tagged(drive: Driver) -> None:
    real, other = seed()
    sentence = "I used the strategy about empty lists because it seemed relevant " * 3
    drive.script(generator=[gen(GOOD, [real, "b-09999", sentence, real])],
                 reflector=[refl(tags=[(real, "helpful"), (other, "harmful"), ("b-09999", "harmful")])],
                 curator=[cur()])
    r = drive.run(spec())
    g = events(r.episode_id, "generate")[0].payload
    assert g["bullet_ids"] == [real] and g["invented_ids"] == 2
    assert g["invented"][0] == "b-09999" and len(g["invented"][1]) <= 80
    rf = events(r.episode_id, "reflect")[0].payload
    assert rf["invented_ids"] == 2 and rf["invented"] == [other, "b-09999"]  # `other` was shown, not used
    assert [t["id"] for t in rf["reflection"]["bullet_tags"]] == [real]
    with read_session() as s:
        assert s.exec(select(Reflection)).one().bullet_tags == [{"id": real, "tag": "helpful"}]
    assert (P.get_bullet("unreliable", real).helpful, P.get_bullet("unreliable", other).harmful) == (1, 0)
    if drive.exact:  # the Reflector was shown only the bullet really used
        used_text = roles_of(drive).reflector.calls[0]["used_bullets"]
        assert f"[{real}]" in used_text and f"[{other}]" not in used_text


def test_curator_ops_are_judged_one_by_one(drive: Driver) -> None:
    real, other = seed()
    invalid = {"op": {"type": "ADD", "section": None, "content": None}, "reason": "ADD needs content"}
    reply = cur(add("Check the empty case first"),
                {"type": "UPDATE", "bullet_id": "b-09999", "content": "rewritten"},
                {"type": "TAG", "bullet_id": real, "tag": "harmful"},
                {"type": "TAG", "bullet_id": other, "tag": "neutral"},
                {"type": "TAG", "bullet_id": other, "tag": "harmful"},
                {"type": "MERGE", "bullet_ids": [other, "b-08888"], "content": "merged"})
    reply["dropped"] = [invalid]  # what the role's parsing could not use (an HTTP driver sends it in the reply)
    drive.script(generator=[gen(GOOD, [real])], reflector=[refl(tags=[(real, "helpful")])], curator=[reply])
    r = drive.run(spec())
    assert (r.status, r.learning_skipped) == ("succeeded", None)
    c = events(r.episode_id, "curate")[0].payload
    reasons = [d["reason"] for d in c["dropped"]]
    assert reasons == ["ADD needs content", "bullet b-09999 was not in the curator's prompt",
                       f"bullet {real} was already tagged by the reflector in this episode",
                       f"bullet {other} was already tagged by the curator in this episode",
                       "bullet b-08888 was not in the curator's prompt"]
    assert [o["type"] for o in c["curation"]["operations"]] == ["ADD", "TAG"]
    (delta,) = deltas(r.episode_id)
    assert delta.dropped == c["dropped"] and delta.status == "applied"
    apply = events(r.episode_id, "apply")[0].payload
    assert (apply["status"], apply["operations"], apply["dropped"]) == ("applied", 3, 5)
    # one TAG per bullet: the reflector's won
    b = P.get_bullet("unreliable", real)
    assert (b.helpful, b.harmful) == (1, 0)
    assert P.get_bullet("unreliable", other).neutral == 1
    assert "Check the empty case first" in [x.content for x in P.active_bullets("unreliable")]


def test_valid_ops_wait_for_review_and_the_dropped_ones_stay_on_the_delta(drive: Driver) -> None:
    real, _ = seed()
    drive.script(generator=[gen(GOOD, [real])], reflector=[refl()],
                 curator=[cur(add("Check the empty case first"), {"type": "REMOVE", "bullet_id": "b-07777"})])
    r = drive.run(spec(review_mode="manual"))
    (delta,) = deltas(r.episode_id)
    assert delta.status == "pending"
    assert [(d["op"]["type"], d["op"]["bullet_id"], d["reason"]) for d in delta.dropped or []] == [
        ("REMOVE", "b-07777", "bullet b-07777 was not in the curator's prompt")]
    with read_session() as s:
        assert [o.type for o in s.exec(select(DeltaOp).where(DeltaOp.delta_id == delta.id))] == ["ADD"]


def test_only_dropped_ops_make_an_empty_delta_that_keeps_them(drive: Driver) -> None:
    drive.script(generator=[gen(GOOD)], reflector=[refl()],
                 curator=[cur({"type": "TAG", "bullet_id": "b-00042", "tag": "helpful"})])
    r = drive.run(spec())
    apply = events(r.episode_id, "apply")[0].payload
    assert (apply["status"], apply["operations"], apply["dropped"]) == ("empty", 0, 1)
    (delta,) = deltas(r.episode_id)
    assert delta.dropped and delta.dropped[0]["reason"] == "bullet b-00042 was not in the curator's prompt"
    drive.script(generator=[gen(GOOD)], reflector=[refl()], curator=[cur()])
    rc, out, _ = drive.cli("run", TASK, "--playbook", "unreliable")
    printed = lines(out)
    assert rc == 0 and printed["[curate]"].endswith(" 0 operations")
    assert printed["[apply]"].endswith(" nothing to apply")
    assert "applied delta" not in out


# ------------------------------------------------------------------ the time budget


def test_the_episode_budget_stops_new_attempts_and_skips_learning(drive: Driver, settings_env) -> None:
    settings_env(ACE_EPISODE_BUDGET="1.0")
    drive.script(generator=[Slow(1.2, gen(BAD)), gen(GOOD)])
    r = drive.run(spec())
    assert (r.status, r.success, r.attempts) == ("failed", False, 1)
    assert r.learning_skipped == "the episode's time budget ran out"
    assert skipped_reason(r.episode_id) == "the episode's time budget ran out"
    if drive.exact:  # a scripted role ignores the budget: its late code still runs
        assert [k for k, _ in kinds(r.episode_id)] == ["route", "generate", "execute", "evaluate", "apply"]
        assert roles_of(drive).generator.left == 1  # the second attempt never started
    else:  # the client ends the call at the budget: an unusable reply, and no second attempt
        assert [k for k, _ in kinds(r.episode_id)] == ["route", "generate", "apply"]
        assert events(r.episode_id, "generate")[0].payload["error_type"] == "LLMTimeout"


# ------------------------------------------------------------------ what `ace run` prints


def test_the_cli_prints_unusable_replies_and_agrees_with_the_database(drive: Driver) -> None:
    drive.script(generator=[truncated(), timed_out(), truncated()])
    rc, out, err = drive.cli("run", TASK, "--playbook", "unreliable")
    assert rc == 1, err
    assert out.count("reply unusable:") == 3 and "no code ran" in out and "truncated at" in out
    assert lines(out)["[apply]"].endswith("] learning skipped: no attempt produced code")
    with read_session() as s:
        ep = s.exec(select(Episode)).one()
    assert (ep.status, ep.attempts) == ("failed", 3)
    assert f"episode {ep.id}: failed after 3 attempt(s); learning skipped: no attempt produced code" in out



# ------------------------------------------------------------------ over HTTP only: what a weak server does


@pytest.fixture()
def http(sb: Any, fake_llm: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         tmp_path: Path) -> HttpDriver:
    (tmp_path / "tests.py").write_text(TESTS)
    monkeypatch.chdir(tmp_path)
    return HttpDriver(fake_llm, sb, monkeypatch, capsys)


def test_a_server_without_structured_output_still_gets_code_from_a_fenced_block(http: HttpDriver) -> None:
    http.fake.reject_json_schema = http.fake.reject_json_object = True
    http.fake.reply(f"Here is the program:\n```python\n{GOOD}```\nIt guards the empty list.",
                    refl("guard empty lists"), cur(add("Guard mean() against empty lists")))
    code, out, _ = http.cli("run", TASK, "--tests", "tests.py", "--playbook", "unreliable")
    assert code == 0, out
    (gen_event,) = events(_only_episode(), "generate")
    assert gen_event.payload["llm_mode"] == "plain" and gen_event.payload["code"].strip() == GOOD.strip()
    modes = [r.get("response_format", {}).get("type") for r in http.fake.chat_requests()]
    assert modes[:3] == ["json_schema", "json_object", None] and set(modes[3:]) == {None}  # refused once each


def test_prose_instead_of_json_is_a_failed_attempt_with_the_reply_kept(http: HttpDriver) -> None:
    prose = "I would loop over the list, add the numbers and divide by the length."
    http.fake.reply(prose, prose, gen(GOOD), refl(), cur())
    code, out, _ = http.cli("run", TASK, "--tests", "tests.py", "--playbook", "unreliable")
    assert code == 0, out
    ep = episode(_only_episode())
    assert (ep.status, ep.success, ep.attempts) == ("succeeded", True, 2)
    first = events(ep.id, "generate")[0].payload
    assert first["response"] == prose and "no code" in first["error"]
    assert ep.tokens == sum(c["prompt_tokens"] + c["completion_tokens"] for c in _call_usage(ep.id))
    assert "nothing to apply" in lines(out)["[apply]"]


def test_429_with_retry_after_is_waited_out_within_the_attempt(http: HttpDriver) -> None:
    http.fake.reply(Status(429, "slow down", {"Retry-After": "0.3"}), gen(GOOD), refl(), cur())
    code, out, _ = http.cli("run", TASK, "--tests", "tests.py", "--playbook", "unreliable")
    assert code == 0, out
    ep = episode(_only_episode())
    assert ep.attempts == 1
    assert [(c["role"], c["retry"], bool(c["error"])) for c in _call_usage(ep.id)][:2] == [
        ("generator", 0, True), ("generator", 1, False)]


def _only_episode() -> str:
    with read_session() as s:
        (ep,) = s.exec(select(Episode)).all()
        return ep.id


def _call_usage(episode_id: str) -> list[dict[str, Any]]:
    from core.storage.models import LLMCall

    with read_session() as s:
        rows = s.exec(select(LLMCall).where(LLMCall.episode_id == episode_id).order_by(LLMCall.id)).all()
        return [{"role": c.role, "retry": c.retry, "error": c.error, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens} for c in rows]
