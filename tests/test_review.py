"""The three-role review workflow end to end: real sandbox, real SQLite, the
real openai client against the fake server."""

from typing import Any

import pytest
from sqlmodel import select

from core import playbook as P
from core.episodes.review import role_playbooks
from core.loop import TaskSpec, episode_events, run_episode
from core.storage.db import read_session
from core.storage.models import Delta, Episode
from tests.scripted import add, cur, gen, refl, scripted_roles, timed_out, truncated

pytestmark = pytest.mark.both_dbs  # every test here runs on SQLite and on PostgreSQL

TESTS = "assert mean([1, 2, 3]) == 2\nassert mean([]) == 0\n"
GOOD = "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"
BAD = "def mean(xs):\n    return sum(xs) / len(xs)\n"


def rev(needs: bool, *issues: str, bullet_ids: list[str] | None = None) -> dict[str, Any]:
    return {"reasoning": "scripted review", "needs_optimization": needs, "issues": list(issues),
            "suggestions": "guard the empty list" if needs else "", "bullet_ids": bullet_ids or []}


def opt(code: str, bullet_ids: list[str] | None = None) -> dict[str, Any]:
    return {"reasoning": "scripted rewrite", "bullet_ids": bullet_ids or [], "code": code, "language": "python"}


def steps(episode_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.payload.get("role")) for e in episode_events(episode_id) if e.kind != "output"]


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec(**{"task": "Write mean(xs), 0 for an empty list", "tests": TESTS, "playbook_id": "rv",
                       "workflow": "review", **kw})


def test_three_roles_review_optimize_rerun_and_learn_into_their_own_playbooks(fake_llm) -> None:
    fake_llm.reply(gen(BAD), rev(True, "ZeroDivisionError on []"), opt(GOOD),
                   refl("guard empty input"), cur(add("Guard averages against empty lists")),
                   refl("failing tests always need a rewrite"),
                   cur(add("A ZeroDivisionError in the run means: optimize")),
                   refl("add the guard first"), cur(add("Fix the crash the traceback names before anything else")))
    r = run_episode(spec(max_iterations=3))
    assert (r.status, r.success, r.attempts, r.code.strip()) == ("succeeded", True, 2, GOOD.strip())
    assert steps(r.episode_id) == [
        ("route", None), ("generate", "generator"), ("execute", "generator"), ("evaluate", "generator"),
        ("review", "reviewer"), ("optimize", "optimizer"), ("execute", "optimizer"), ("evaluate", "optimizer"),
        ("reflect", "generator"), ("curate", "generator"), ("apply", "generator"),
        ("reflect", "reviewer"), ("curate", "reviewer"), ("apply", "reviewer"),
        ("reflect", "optimizer"), ("curate", "optimizer"), ("apply", "optimizer")]
    evs = {(e.kind, e.payload.get("role")): e for e in episode_events(r.episode_id)}
    assert evs[("evaluate", "generator")].payload["passed"] is False
    assert evs[("evaluate", "optimizer")].payload["passed"] is True
    assert evs[("review", "reviewer")].payload["needs_optimization"] is True
    pbs = role_playbooks("rv")
    assert [b.content for b in P.active_bullets(pbs["generator"])] == ["Guard averages against empty lists"]
    assert [b.content for b in P.active_bullets(pbs["reviewer"])] == ["A ZeroDivisionError in the run means: optimize"]
    assert [b.content for b in P.active_bullets(pbs["optimizer"])] == [
        "Fix the crash the traceback names before anything else"]
    # the reviewer's reflection saw its decision and what followed it
    reviewer_refl = fake_llm.chat_requests()[5]["messages"]
    assert "REVIEWER" in reviewer_refl[0]["content"] and "needs_optimization=True" in reviewer_refl[1]["content"]
    assert "rewrite PASSED" in reviewer_refl[1]["content"]
    assert set(r.curation) == {"generator", "reviewer", "optimizer"}
    with read_session() as s:
        ep = s.get(Episode, r.episode_id)
        assert ep.delta_id == r.delta_id and ep.tokens > 0 and ep.attempts == 2
        assert {d.playbook_id for d in s.exec(select(Delta))} == set(pbs.values())


def test_reviewer_approves_passing_code_and_the_optimizer_does_not_act(fake_llm) -> None:
    fake_llm.reply(gen(GOOD), rev(False), refl(), cur(), refl(), cur())
    r = run_episode(spec())
    assert (r.success, r.attempts) == (True, 1)
    kinds = [k for k, _ in steps(r.episode_id)]
    assert "optimize" not in kinds and kinds.count("reflect") == 2
    assert set(r.curation) == {"generator", "reviewer"} and fake_llm.pending == 0


def test_failing_code_is_optimized_even_when_the_reviewer_lets_it_pass(fake_llm) -> None:
    fake_llm.reply(gen(BAD), rev(False), opt(GOOD), refl(), cur(), refl(), cur(), refl(), cur())
    r = run_episode(spec())
    assert r.success is True
    review = next(e for e in episode_events(r.episode_id) if e.kind == "review")
    assert review.payload["forced"] is True and review.payload["needs_optimization"] is False


def test_each_role_reads_its_own_playbook_and_manual_review_leaves_deltas_per_role(fake_llm) -> None:
    pbs = role_playbooks("rv")
    P.apply_delta(pbs["reviewer"], [add("Reviewer lesson: look for empty inputs")])
    P.apply_delta(pbs["optimizer"], [add("Optimizer lesson: keep the function name")])
    (rb,), (ob,) = P.active_bullets(pbs["reviewer"]), P.active_bullets(pbs["optimizer"])
    fake_llm.reply(gen(BAD), rev(True, "crash", bullet_ids=[rb.id]), opt(GOOD, [ob.id]),
                   refl(), cur(add("g")), refl(tags=[(rb.id, "helpful")]), cur(add("r")),
                   refl(tags=[(ob.id, "helpful")]), cur(add("o")))
    r = run_episode(spec(review_mode="manual"))
    reqs = fake_llm.chat_requests()
    assert "Reviewer lesson" in reqs[1]["messages"][0]["content"]
    assert "Optimizer lesson" not in reqs[1]["messages"][0]["content"]
    assert "Optimizer lesson" in reqs[2]["messages"][0]["content"]
    assert "Reviewer lesson" not in reqs[0]["messages"][0]["content"]
    with read_session() as s:
        pending = {d.playbook_id: d for d in s.exec(select(Delta).where(Delta.episode_id == r.episode_id))}
    assert set(pending) == set(pbs.values()) and all(d.status == "pending" for d in pending.values())
    P.auto_apply(pending[pbs["reviewer"]].id, actor="tester")  # what the diff viewer's approve does
    assert P.get_bullet(pbs["reviewer"], rb.id).helpful == 1
    assert [b.content for b in P.active_bullets(pbs["reviewer"])][-1] == "r"


def test_frozen_review_episode_does_not_learn(fake_llm) -> None:
    fake_llm.reply(gen(BAD), rev(True, "crash"), opt(BAD), rev(True, "still"), opt(GOOD))
    r = run_episode(spec(learn=False, max_iterations=3))
    assert (r.success, r.attempts, r.delta_id) == (True, 3, None)
    assert "reflect" not in [k for k, _ in steps(r.episode_id)] and fake_llm.pending == 0


# ------------------------------------------------------------------ unusable replies (scripted roles, no HTTP)


def test_unusable_replies_cost_attempts_and_each_role_says_why_it_learned_nothing(db_url) -> None:
    roles = scripted_roles(generator=[truncated(), gen(BAD)], reviewer=[timed_out()],
                           optimizer=[truncated(), opt(GOOD)],
                           reflector=[refl("guard"), refl("rewrite")], curator=[cur(), cur()])
    r = run_episode(spec(max_iterations=4), roles=roles)
    assert (r.status, r.success, r.attempts) == ("succeeded", True, 4)
    assert [(k, role, e.attempt) for (k, role), e in zip(steps(r.episode_id), _events(r.episode_id))] == [
        ("route", None, None), ("generate", "generator", 1), ("generate", "generator", 2),
        ("execute", "generator", 2), ("evaluate", "generator", 2), ("review", "reviewer", 2),
        ("optimize", "optimizer", 3), ("optimize", "optimizer", 4), ("execute", "optimizer", 4),
        ("evaluate", "optimizer", 4),
        ("reflect", "generator", None), ("curate", "generator", None), ("apply", "generator", None),
        ("apply", "reviewer", None),
        ("reflect", "optimizer", None), ("curate", "optimizer", None), ("apply", "optimizer", None)]
    evs = _events(r.episode_id)
    review = next(e for e in evs if e.kind == "review").payload
    assert review["error_type"] == "LLMTimeout" and review["forced"] is True  # failing code is optimized anyway
    skipped = [e.payload for e in evs if e.kind == "apply" and e.payload["status"] == "skipped"]
    assert [(p["role"], p["reason"]) for p in skipped] == [("reviewer", "no reply of the reviewer could be used")]
    assert r.learning_skipped == "reviewer: no reply of the reviewer could be used"
    # the optimizer was asked again under the same review, told why its reply could not be used
    assert "could not be used" in roles.optimizer.calls[1]["feedback"]
    # the generator's Reflector saw its unusable attempt and its real one
    assert [a.number for a in roles.reflector.calls[0]["attempts"]] == [1, 2]
    with read_session() as s:
        ep = s.get(Episode, r.episode_id)
        assert (ep.status, ep.attempts) == ("succeeded", 4)
        # 6 good answers (generator, optimizer, 2 reflections, 2 curations) and 3 unusable ones
        assert ep.tokens == 6 * 150 + 184 + 0 + 184


def test_a_generator_that_never_answers_usably_ends_failed_without_review(db_url) -> None:
    roles = scripted_roles(generator=[truncated(), truncated()], reviewer=[], optimizer=[])
    r = run_episode(spec(max_iterations=2), roles=roles)
    assert (r.status, r.success, r.attempts, r.code) == ("failed", False, 2, None)
    assert [k for k, _ in steps(r.episode_id)] == ["route", "generate", "generate", "apply"]
    assert r.learning_skipped == "generator: no attempt produced code"
    with read_session() as s:
        ep = s.get(Episode, r.episode_id)
        assert (ep.status, ep.success, ep.attempts, ep.error) == ("failed", False, 2, None)


def test_reviewer_and_optimizer_ids_not_in_their_prompts_are_dropped(db_url) -> None:
    pbs = role_playbooks("rv")
    P.apply_delta(pbs["reviewer"], [add("Reviewer lesson: look for empty inputs")])
    (rb,) = P.active_bullets(pbs["reviewer"])
    roles = scripted_roles(generator=[gen(BAD)], reviewer=[rev(True, "crash", bullet_ids=[rb.id, "b-09999"])],
                           optimizer=[opt(GOOD, ["b-00001", "made-up"])],
                           reflector=[refl(), refl(), refl()], curator=[cur(), cur(), cur()])
    r = run_episode(spec(learn=True), roles=roles)
    evs = {e.kind: e.payload for e in _events(r.episode_id) if e.kind in ("review", "optimize")}
    assert (evs["review"]["bullet_ids"], evs["review"]["invented_ids"]) == ([rb.id], 1)
    assert (evs["optimize"]["bullet_ids"], evs["optimize"]["invented_ids"]) == ([], 2)  # its playbook is empty


def _events(episode_id: str) -> list[Any]:
    return [e for e in episode_events(episode_id) if e.kind != "output"]
