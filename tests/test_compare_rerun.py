"""Compare two episodes, re-run one with edits, and a first visit that explains (AppTest, real SQLite)."""

from core import compare, views
from core import playbook as P
from core.episodes import samples
from core.loop import TaskSpec, rerun_spec, run_episode
from tests.scripted import add, cur, gen, refl
from tests.support import open_app, wait_for

PLAYGROUND, COMPARE = "app_pages/playground.py", "app_pages/compare.py"
TESTS = "assert mean([]) == 0\nassert mean([2, 4]) == 3\n"


def shown(elements) -> list[str]:  # type: ignore[no-untyped-def]
    """Text as a person reads it (safe.* escapes Markdown's characters)."""
    return [e.value.replace("\\", "") for e in elements]


def two_runs(fake_llm) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    fake_llm.reply(gen("def mean(xs):\n    return sum(xs) / len(xs)\n", ["b-00001"]),
                   gen("def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"),
                   refl("guard empty input"), cur(add("Guard against empty lists before dividing")))
    P.apply_delta("stats", [{"type": "ADD", "content": "Averages of nothing are zero here"}])
    first = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats"))
    fake_llm.reply(gen("def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"), refl("fine"), cur())
    second = run_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="stats",
                                  rerun_of=first.episode_id))
    return first.episode_id, second.episode_id


# ------------------------------------------------------------------ compare


def test_two_episodes_side_by_side(fake_llm) -> None:
    a, b = two_runs(fake_llm)
    at = open_app(COMPARE, a=a, b=b)
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["", "A", "B"]
    verdicts = dict(zip(table[""], zip(table["A"], table["B"])))
    assert "succeeded on attempt 2" in verdicts["verdict"][0] and "succeeded on attempt 1" in verdicts["verdict"][1]
    assert verdicts["attempts"] == ("2/3", "1/3")
    diffs = [c.value for c in at.code if c.language == "diff"]
    assert diffs == [] or all("if xs else 0" in d for d in diffs)  # both ended with the same code here
    assert any(e.label.replace("\\", "") == "Attempt 2" for e in at.expander)
    side = compare.side(a)
    assert side is not None and side.used == ["b-00001"] and side.attempts[0].verdict.endswith("checks")


def test_compare_says_when_an_episode_does_not_exist(fake_llm) -> None:
    a, _ = two_runs(fake_llm)
    at = open_app(COMPARE, a=a, b="ep-nope")
    assert any("No such episode: B (ep-nope)" in w for w in shown(at.warning))


def test_compare_on_an_empty_database(db_url) -> None:
    at = open_app(COMPARE)
    assert any("No episodes yet" in i for i in shown(at.info))


def test_the_trace_offers_a_rerun_and_a_comparison_with_the_original(fake_llm) -> None:
    a, b = two_runs(fake_llm)
    at = open_app("app_pages/trace.py", episode=b)
    links = {p.proto.label.replace("\\", ""): dict(p.proto.query_string and [kv.split("=") for kv in
                                                                           p.proto.query_string.split("&")] or [])
             for p in at.get("page_link")}
    assert links["Re-run with edits"] == {"rerun": b}
    assert links[f"Compare with {a}, which it re-ran"] == {"a": a, "b": b}
    assert at.selectbox(key=f"compare-with-{b}").value == a  # the same task comes first


# ------------------------------------------------------------------ re-run with edits


def test_a_rerun_opens_the_playground_prefilled_and_links_back(fake_llm, monkeypatch) -> None:
    a, _ = two_runs(fake_llm)
    monkeypatch.setenv("ACE_WORKER_IN_APP", "1")
    at = open_app(PLAYGROUND, rerun=a)
    assert at.text_area(key="task").value == "Write mean(xs)"
    assert at.radio(key="mode").value == "LLM episode" and at.selectbox(key="pb_pick").value == "stats"
    assert at.session_state["tests_code"] == TESTS
    at.text_area(key="task").set_value("Write mean(xs); an empty list gives 0")
    fake_llm.reply(gen("def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"), refl("ok"), cur())
    at.button[-1].click().run()  # Run
    assert not at.exception
    new_id = at.query_params["episode"]
    new = views.get_episode(new_id)
    assert new is not None and new.rerun_of == a and new.task == "Write mean(xs); an empty list gives 0"
    wait_for(lambda: views.get_episode(new_id).status not in ("queued", "running"), timeout=60, interval=0.2,
             message="the re-run never finished")
    assert views.get_episode(new_id).status == "succeeded"


def test_a_rerun_of_given_code_brings_its_code(db_url) -> None:
    r = run_episode(TaskSpec(task="say hi", mode="sandbox_only", code="print('hi')", expected_output="hi"))
    spec = rerun_spec(r.episode_id)
    assert spec.mode == "sandbox_only" and spec.code == "print('hi')" and spec.rerun_of == r.episode_id
    at = open_app(PLAYGROUND, rerun=r.episode_id)
    assert at.radio(key="mode").value == "Run this code (no LLM)" and at.session_state["code_editor"] == "print('hi')"


def test_a_rerun_of_an_unknown_episode_says_so(db_url) -> None:
    at = open_app(PLAYGROUND, rerun="ep-nope")
    assert any("There is no episode 'ep-nope' to re-run" in w for w in shown(at.warning))


# ------------------------------------------------------------------ a first visit


def test_a_first_visit_explains_and_offers_a_run_without_a_model(db_url, monkeypatch) -> None:
    monkeypatch.setenv("ACE_WORKER_IN_APP", "1")
    at = open_app(PLAYGROUND)
    assert any("learns from running its own code" in h for h in shown(at.subheader))
    assert at.get("graphviz_chart")  # the loop, as a picture
    button = at.button(key="first_run")
    assert "no model needed" in button.label
    button.click().run()
    episode_id = at.query_params["episode"]
    wait_for(lambda: views.get_episode(episode_id).status not in ("queued", "running"), timeout=60, interval=0.2,
             message="the first run never finished")
    ep = views.get_episode(episode_id)
    assert ep.mode == "sandbox_only" and ep.playbook_id == samples.STARTER_PLAYBOOK
    assert ep.status == "failed"  # the sample's code has the bug its tests catch
    at.run()
    assert not at.exception
    assert any("Guard against empty inputs" in t.value for t in at.text)  # the strategy that would have helped
    assert not any("learns from running its own code" in h for h in shown(at.subheader))  # no longer empty


def test_a_first_visit_with_a_model_offers_an_llm_episode(fake_llm) -> None:
    at = open_app(PLAYGROUND)
    assert "let the model solve a sample task" in at.button(key="first_run").label


def test_the_sidebar_speaks_plainly_first(db_url) -> None:
    at = open_app(PLAYGROUND)
    side = shown(at.sidebar.markdown)
    assert side[0].startswith("**Model**: none yet") and any("isolated in a sandbox" in m for m in side)
    assert any(e.label == "Technical details" for e in at.sidebar.expander)
