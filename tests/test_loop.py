"""The core loop end to end: the real sandbox, a real SQLite file, the real
openai client against the fake OpenAI-compatible server."""

from sqlmodel import select

from core import playbook as P
from core.loop import TaskSpec, episode_events, learn, run_episode
from core.playbook.lines import marked_bullet_ids as extract_bullet_ids
from core.playbook.routing import route
from core.storage.db import read_session
from core.storage.models import Delta, Episode, LLMCall, Reflection
from tests.fake_llm import Status
from tests.scripted import add, cur, gen, refl

TESTS = "assert mean([1, 2, 3]) == 2\nassert mean([]) == 0\n"
GOOD = "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"
BAD = "def mean(xs):\n    return sum(xs) / len(xs)\n"


def kinds(episode_id: str) -> list[str]:
    return [e.kind for e in episode_events(episode_id) if e.kind != "output"]


def test_full_episode_learns_and_applies(fake_llm) -> None:
    fake_llm.reply(gen(GOOD), refl("empty lists need a guard"), cur(add("Guard mean() against empty lists")))
    r = run_episode(TaskSpec(task="Write mean(xs), 0 for an empty list", tests=TESTS, playbook_id="stats"))
    assert (r.status, r.success, r.attempts) == ("succeeded", True, 1)
    assert kinds(r.episode_id) == ["route", "generate", "execute", "evaluate", "reflect", "curate", "apply"]
    assert r.version == 1 and [b.content for b in P.active_bullets("stats")] == ["Guard mean() against empty lists"]
    with read_session() as s:
        ep = s.get(Episode, r.episode_id)
        assert ep.status == "succeeded" and ep.tokens > 0 and ep.isolation
        assert s.exec(select(Reflection)).one().key_insight == "empty lists need a guard"
        assert len(s.exec(select(LLMCall)).all()) == 3
        assert s.get(Delta, r.delta_id).status == "applied"
    gen_event = next(e for e in episode_events(r.episode_id) if e.kind == "generate")
    assert gen_event.payload["code"].strip() == GOOD.strip() and gen_event.duration_ms > 0
    assert gen_event.payload["prompt_tokens"] > 0


def test_refinement_feeds_the_real_error_back(fake_llm) -> None:
    fake_llm.reply(gen(BAD), gen(GOOD), refl(), cur())
    r = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats", max_iterations=3))
    assert (r.status, r.attempts) == ("succeeded", 2)
    second = fake_llm.chat_requests()[1]["messages"][-1]["content"]
    assert "ZeroDivisionError" in second and "previous attempt failed" in second
    assert kinds(r.episode_id).count("execute") == 2


def test_failure_after_max_iterations(fake_llm) -> None:
    fake_llm.reply(gen(BAD), gen(BAD), refl(), cur())
    r = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats", max_iterations=2))
    assert (r.status, r.success, r.attempts) == ("failed", False, 2)


def test_manual_review_leaves_a_pending_delta(fake_llm) -> None:
    fake_llm.reply(gen(GOOD), refl(), cur(add("Prefer statistics.fmean for floats")))
    r = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats", review_mode="manual"))
    with read_session() as s:
        assert s.get(Delta, r.delta_id).status == "pending"
    assert P.active_bullets("stats") == [] and r.version is None


def test_environment_routing() -> None:
    assert route("Train a classifier and report accuracy", "python").environment == "ml"
    assert route("Load the csv and compute the median per group", "python").environment == "data_analysis"
    assert route("Reverse a string", "javascript").environment == "javascript"
    r = route("Reverse a linked list", "python")
    assert r.environment == "python" and "language is python" in r.reason


def test_routed_episode_records_choice_and_runs_javascript(fake_llm) -> None:
    fake_llm.reply(gen("console.log([1,2,3].map(x => x * 2).join(','))", language="javascript"), refl(), cur())
    r = run_episode(TaskSpec(task="Double each number and print them", language="javascript", expected_output="2,4,6"))
    assert r.playbook_id == "javascript" and r.success
    route_ev = episode_events(r.episode_id)[0]
    assert route_ev.kind == "route" and "javascript" in route_ev.payload["reason"]


def test_learning_carries_to_the_next_related_task(fake_llm) -> None:
    # Task A fails for want of a strategy; the curator adds it.
    fake_llm.reply(gen(BAD), refl("average of nothing must be 0"),
                   cur(add("When averaging, return 0 for an empty list instead of dividing by zero")))
    a = run_episode(TaskSpec(task="Write mean(xs): the average of a list", tests=TESTS, playbook_id="learn",
                             max_iterations=1))
    assert a.success is False
    (bullet,) = P.active_bullets("learn")
    # Task B is related; the generator must see the bullet in its system message.
    fake_llm.reply(gen("def average_score(s):\n    return sum(s) / len(s) if s else 0\n", [bullet.id]),
                   refl(tags=[(bullet.id, "helpful")]), cur())
    b = run_episode(TaskSpec(task="Write average_score(scores): the average of a list of scores",
                             tests="assert average_score([]) == 0\nassert average_score([2, 4]) == 3\n",
                             playbook_id="learn"))
    assert b.success is True
    system = fake_llm.chat_requests()[3]["messages"][0]
    assert system["role"] == "system" and f"[{bullet.id}]" in system["content"]
    assert f"[{bullet.id}]" not in fake_llm.chat_requests()[3]["messages"][1]["content"]
    assert P.get_bullet("learn", bullet.id).helpful == 1


def test_a_failing_model_server_costs_attempts_not_the_episode(fake_llm) -> None:
    fake_llm.reply(*[Status(503)] * 20)  # every request of every attempt, retries included
    r = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats", max_iterations=2))
    assert (r.status, r.success, r.attempts) == ("failed", False, 2)
    assert r.learning_skipped == "no attempt produced code"
    assert kinds(r.episode_id) == ["route", "generate", "generate", "apply"]
    evs = episode_events(r.episode_id)
    assert all("503" in e.payload["error"] for e in evs if e.kind == "generate")
    assert evs[-1].payload["status"] == "skipped"
    with read_session() as s:
        ep = s.get(Episode, r.episode_id)
        assert (ep.status, ep.attempts, ep.error) == ("failed", 2, None) and ep.llm_ms > 0


def test_malformed_curator_output_changes_nothing_and_keeps_the_verdict(fake_llm) -> None:
    bad = {"reasoning": "x", "operations": [{"type": "EXPLODE"}]}
    fake_llm.reply(gen(GOOD), refl(), bad, bad)
    r = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats"))
    assert (r.status, r.success) == ("succeeded", True)
    assert P.active_bullets("stats") == []
    assert "reflect" in kinds(r.episode_id)  # what happened before is kept
    with read_session() as s:
        assert s.exec(select(Reflection)).first() is not None
        delta = s.exec(select(Delta)).first()
    apply = episode_events(r.episode_id)[-1].payload
    if apply["status"] == "skipped":  # the whole reply was unusable
        assert "Curator" in apply["reason"] and delta is None
    else:  # or its one op was dropped, and the delta says why
        assert apply["status"] == "empty" and delta is not None and delta.dropped


def test_not_configured_says_what_to_set(db_url) -> None:
    r = run_episode(TaskSpec(task="anything", playbook_id="x"))
    assert r.status == "error" and "OPENAI_API_KEY" in r.error


def test_sandbox_only_mode_needs_no_llm(db_url) -> None:
    r = run_episode(TaskSpec(task="hello", mode="sandbox_only", code="print('hello')", expected_output="hello"))
    assert r.success is True and kinds(r.episode_id) == ["route", "execute", "evaluate"]
    execute = next(e for e in episode_events(r.episode_id) if e.kind == "execute")
    assert execute.payload["execution"]["logs"]["stdout"] == ["hello\n"]


def test_output_streams_live_while_a_run_is_slow(db_url) -> None:
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.4)\n"
    r = run_episode(TaskSpec(task="tick", mode="sandbox_only", code=code))
    evs = episode_events(r.episode_id)
    outputs = [e for e in evs if e.kind == "output"]
    first_execute = next(i for i, e in enumerate(evs) if e.kind == "execute")
    assert outputs and evs.index(outputs[0]) < first_execute  # seen before the run ended
    assert "".join(e.payload["text"] for e in outputs).split() == ["tick", "0", "tick", "1", "tick", "2"]


def test_learn_from_an_outside_trajectory(fake_llm) -> None:
    P.apply_delta("agent", [{"type": "ADD", "content": "Quote shell arguments"}])
    shown = P.embed_prompt("agent", "Delete the temp files", 5)
    assert extract_bullet_ids(shown) == ["b-00001"]
    fake_llm.reply(refl(tags=[("b-00001", "helpful")]), cur(add("Use rm -- to stop option parsing")))
    out = learn("agent", shown, "ran: rm -- '-rf tmp'", evaluation="passed")
    assert out["status"] == "applied" and out["version"] == 2
    assert P.get_bullet("agent", "b-00001").helpful == 1
    assert "b-00001" in fake_llm.chat_requests()[0]["messages"][1]["content"]


def test_curator_is_shown_near_duplicates_to_merge(fake_llm, settings_env) -> None:
    settings_env(ACE_EMBEDDER="endpoint", ACE_EMBED_MODEL="fake-embed")
    from core.retrieval.embeddings import reset_embedders

    reset_embedders()
    P.apply_delta("dups", [{"type": "ADD", "content": "cache results of slow pure functions with lru_cache"},
                           {"type": "ADD", "section": "snippets",
                            "content": "lru_cache: cache results of slow pure functions"}])
    fake_llm.reply(gen(GOOD), refl(), cur())
    run_episode(TaskSpec(task="Write mean(xs) and cache slow functions", tests=TESTS, playbook_id="dups"))
    curator_request = fake_llm.chat_requests()[-1]["messages"][1]["content"]
    assert "consider MERGE" in curator_request and "[b-00001] ~ [b-00002]" in curator_request
    reset_embedders()
