"""Every page in AppTest, on an empty and on a populated database."""

from pathlib import Path

import pytest
from sqlmodel import select

from core import curves
from core import playbook as P
from core.loop import TaskSpec, run_episode
from core.storage.db import read_session
from core.storage.models import Delta, DeltaOp
from tests.scripted import add, cur, gen, refl, unhelpful_model
from tests.support import open_app, wait_for

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["app_pages/playground.py", "app_pages/trace.py", "app_pages/reflection.py", "app_pages/playbook.py",
         "app_pages/learning.py", "app_pages/benchmarks.py", "app_pages/compare.py"]


app = open_app


@pytest.fixture()
def populated(fake_llm) -> dict[str, str]:
    fake_llm.reply(gen("def mean(xs):\n    return sum(xs) / len(xs)\n"),
                   gen("def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"),
                   refl("guard empty input", tags=[]),
                   cur(add("Guard against empty lists before dividing by their length")))
    r = run_episode(TaskSpec(task="Write mean(xs)", tests="assert mean([]) == 0\nassert mean([2, 4]) == 3\n",
                             playbook_id="stats", review_mode="manual"))
    P.apply_delta("stats", [{"type": "ADD", "content": "Use statistics.median for medians"}])
    run_episode(TaskSpec(task="print hi", mode="sandbox_only", code="print('hi')", expected_output="hi",
                         playbook_id="stats"))
    return {"episode": r.episode_id, "delta": r.delta_id}


@pytest.mark.parametrize("page", PAGES)
def test_pages_on_an_empty_database(db_url, page: str) -> None:
    at = app(page)
    assert at.title


def test_empty_database_messages(db_url) -> None:
    assert "No playbooks yet" in app("app_pages/playbook.py").info[0].value
    assert "No episodes yet" in app("app_pages/trace.py").info[0].value
    assert "No finished episodes" in app("app_pages/learning.py").info[0].value


def test_playground_without_llm_says_what_to_set(db_url) -> None:
    at = app()
    assert at.radio(key="mode").value == "Run this code (no LLM)"
    at.radio(key="mode").set_value("LLM episode").run()
    assert any("OPENAI_API_KEY" in w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_pages_on_a_populated_database(populated, page: str) -> None:
    at = app(page, episode=populated["episode"], playbook="stats")
    assert at.title


def test_trace_shows_the_steps(populated) -> None:
    at = app("app_pages/trace.py", episode=populated["episode"])
    labels = [e.label for e in at.expander]
    assert any("generate" in label for label in labels) and any("execute" in label for label in labels)
    assert any("FAILED" in w.value for w in at.warning) and any("PASSED" in s.value for s in at.success)


def test_reflection_page_shows_fields(populated) -> None:
    at = app("app_pages/reflection.py", episode=populated["episode"])
    assert [h.value for h in at.subheader][:4] == ["Error identification", "Root cause analysis",
                                                  "Correct approach", "Key insight"]
    assert any("guard empty input" in m.value for m in at.text)
    links = [(p.proto.label.replace("\\", ""), p.proto.page) for p in at.get("page_link")]
    assert any("The delta it produced (pending, 1 op(s))" in label for label, _ in links), links


def test_reflection_page_says_when_an_episode_does_not_exist(populated) -> None:
    at = app("app_pages/reflection.py", episode="ep-nope")
    assert any("no episode 'ep" in w.value.replace("\\", "") for w in at.warning)


def test_approve_creates_a_version(populated) -> None:
    at = app("app_pages/playbook.py", playbook="stats", delta=populated["delta"])
    with read_session() as s:
        op = s.exec(select(DeltaOp).where(DeltaOp.delta_id == populated["delta"], DeltaOp.type == "ADD")).one()
    before = P.get_playbook("stats").current_version
    at.text_area(key=f"edit-{op.oid}").set_value("Guard against empty lists before dividing")
    at.segmented_control(key=f"stage-{op.oid}").set_value("✅ Approve").run()
    assert P.get_playbook("stats").current_version == before  # staged, not applied yet
    at.button(key=f"apply-{populated['delta']}").click().run()
    assert not at.exception
    assert P.get_playbook("stats").current_version == before + 1
    assert "Guard against empty lists before dividing" in [b.content for b in P.active_bullets("stats")]
    with read_session() as s:
        assert s.get(DeltaOp, op.oid).decision == "approved"
        assert s.get(Delta, populated["delta"]).status == "applied"


def test_reject_changes_the_database(populated) -> None:
    at = app("app_pages/playbook.py", playbook="stats")
    with read_session() as s:
        op = s.exec(select(DeltaOp).where(DeltaOp.delta_id == populated["delta"], DeltaOp.type == "ADD")).one()
    at.text_input(key=f"note-{op.oid}").set_value("too specific")
    at.segmented_control(key=f"stage-{op.oid}").set_value("❌ Reject").run()
    at.button(key=f"apply-{populated['delta']}").click().run()
    with read_session() as s:
        row = s.get(DeltaOp, op.oid)
        assert row.decision == "rejected" and row.note == "too specific"
        assert s.get(Delta, populated["delta"]).status == "rejected"
    assert len(P.active_bullets("stats")) == 1


def test_sandbox_only_run_from_the_playground(db_url, monkeypatch) -> None:
    monkeypatch.setenv("ACE_WORKER_IN_APP", "1")
    at = app()
    at.text_area(key="task").set_value("say hi")
    at.session_state["code_ace_0"] = "print('hi from the sandbox')"
    at.text_area(key="expected").set_value("hi from the sandbox")
    at.button[-1].click().run()  # Run
    assert not at.exception
    from core import views

    ep = views.get_episode(at.query_params["episode"])
    assert ep is not None and ep.mode == "sandbox_only" and ep.code == "print('hi from the sandbox')"
    wait_for(lambda: views.get_episode(ep.id).status not in ("queued", "running"), timeout=60, interval=0.2,
             message="the in-app worker never finished the episode")  # it runs in the background
    assert views.get_episode(ep.id).status == "succeeded"


def test_version_diff_and_restore(populated) -> None:
    P.apply_delta("stats", [{"type": "REMOVE", "bullet_id": "b-00001"}])
    at = app("app_pages/playbook.py", playbook="stats", diff="1..2")
    assert not at.exception
    v = P.get_playbook("stats").current_version
    at.selectbox(key="restore_pick").set_value(1)
    at.button(key="restore_btn").click().run()
    assert P.get_playbook("stats").current_version == v + 1


def test_benchmarks_page_shows_a_finished_run(fake_llm) -> None:
    from core import bench, jobs

    fake_llm.default = unhelpful_model
    run_id = bench.start_bench("python", epochs=1, split=0.5, limit=2, concurrency=1)
    jobs.run_worker(max_jobs=1, poll_s=0.05)
    assert bench.bench_progress(run_id)["status"] == "done"
    at = app("app_pages/benchmarks.py", run=run_id)
    assert at.selectbox[-1].value == run_id
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Held-out test split" in c for c in charts)
    assert run_id in at.dataframe[0].value["run"].tolist()
    pairs = [p for p in at.get("page_link") if p.proto.page == "compare"]  # per task: baseline against ACE
    assert pairs, [p.proto.label for p in at.get("page_link")]
    query = dict(kv.split("=") for kv in pairs[0].proto.query_string.split("&"))
    from core import views

    assert views.get_episode(query["a"]).bench_run_id == run_id == views.get_episode(query["b"]).bench_run_id
    compared = app("app_pages/compare.py", **query)
    assert compared.dataframe[0].value["A"].iloc[0]  # the verdict row, both sides filled
    learning_page = app("app_pages/learning.py")
    learning = [c.proto.spec for c in learning_page.get("plotly_chart")]
    assert any("baseline vs ACE" in c for c in learning) and any("Success by epoch" in c for c in learning)
    assert any("benchmark episodes" in c.value for c in learning_page.caption)  # not in the learning curve


def test_learning_curves_count_only_model_episodes(populated) -> None:
    """The populated database has one model episode and one run of given code: only the first is learning."""

    assert len(curves.learning_frame("stats")) == 1
    at = app("app_pages/learning.py", playbook="stats")
    assert next(m.value for m in at.metric if m.label == "episodes") == "1"
    assert any("1 runs of given code \\(no model\\)" in c.value for c in at.caption), [c.value for c in at.caption]
