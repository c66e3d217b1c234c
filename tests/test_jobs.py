"""Durable jobs: a worker process killed mid-episode, cancellation, concurrent writers."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core import jobs
from core import playbook as P
from core.loop import TaskSpec, episode_events, submit_episode
from core.storage.db import read_session
from core.storage.models import Episode
from tests.fake_llm import Delay
from tests.scripted import add, cur, gen, refl
from tests.support import wait_for

pytestmark = pytest.mark.both_dbs  # every test here runs on SQLite and on PostgreSQL

TESTS = "assert mean([1, 2, 3]) == 2\nassert mean([]) == 0\n"
GOOD = "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0\n"
ACE = str(Path(sys.executable).with_name("ace"))


def test_killed_worker_leaves_a_retried_job_and_an_intact_playbook(fake_llm) -> None:
    fake_llm.reply(Delay(60, gen(GOOD)))  # the worker will be stuck in the model call
    episode_id, job_id = submit_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="crash"))
    worker = subprocess.Popen([ACE, "worker", "--poll", "0.1"], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(fake_llm.chat_requests()) == 1 and jobs.get_job(job_id).status == "running",
                 timeout=30, message="the worker never got stuck in the model call")
    finally:
        worker.kill()
        worker.wait()
    assert jobs.get_job(job_id).status == "running"  # nobody finished it
    assert jobs.recover_stale(stale_after_s=0) == [job_id]
    assert jobs.get_job(job_id).status == "queued"
    assert any("worker" in (e.payload.get("message") or "") for e in episode_events(episode_id) if e.kind == "error")
    fake_llm.reply(gen(GOOD), refl(), cur(add("Averages of empty lists are 0 here")))
    assert jobs.run_worker(max_jobs=1, poll_s=0.05) == 1
    job = jobs.get_job(job_id)
    assert job.status == "done" and job.attempts == 2
    with read_session() as s:
        assert s.get(Episode, episode_id).status == "succeeded"
    assert [b.content for b in P.active_bullets("crash")] == ["Averages of empty lists are 0 here"]
    assert P.get_playbook("crash").current_version == 1


def test_out_of_attempts_is_visibly_failed(db_url) -> None:
    job_id = jobs.enqueue("episode", {"episode_id": None, "spec": {}}, max_attempts=1)
    assert jobs.claim("w1").id == job_id
    jobs.recover_stale(stale_after_s=0)
    job = jobs.get_job(job_id)
    assert job.status == "failed" and "no attempts are left" in job.error


def test_cancel_a_running_episode(fake_llm) -> None:
    answer = threading.Event()  # the model answers only once the job has been cancelled

    def held_answer(request: dict) -> dict:
        answer.wait(30)
        return gen(GOOD)

    fake_llm.reply(held_answer)
    episode_id, job_id = submit_episode(TaskSpec(task="Write mean(xs)", tests=TESTS, playbook_id="c"))
    t = threading.Thread(target=jobs.run_worker, kwargs={"max_jobs": 1, "poll_s": 0.05})
    t.start()
    try:
        wait_for(lambda: jobs.get_job(job_id).status == "running", timeout=30, message="the episode never started")
        assert jobs.cancel(job_id) == "running"
    finally:
        answer.set()
    t.join(30)
    assert jobs.get_job(job_id).status == "cancelled"
    with read_session() as s:
        assert s.get(Episode, episode_id).status == "cancelled"
    assert P.active_bullets("c") == []


def test_cancel_a_queued_job_and_retry_it(db_url) -> None:
    job_id = jobs.enqueue("learn", {"playbook_id": "x"})
    assert jobs.cancel(job_id) == "cancelled"
    jobs.retry(job_id)
    assert jobs.get_job(job_id).status == "queued"


def test_two_claimers_never_take_the_same_job(db_url) -> None:
    ids = {jobs.enqueue("noop", {}) for _ in range(20)}
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := jobs.claim(name, ["noop"])) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def test_concurrent_writers_from_processes_lose_no_update(db_url) -> None:
    P.apply_delta("shared", [{"type": "ADD", "content": "A bullet everybody tags"}])
    script = ("from core import playbook as P\n"
              "for _ in range(15):\n"
              "    P.apply_delta('shared', [{'type': 'TAG', 'bullet_id': 'b-00001', 'tag': 'helpful'}])\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ)) for _ in range(3)]
    for _ in range(15):
        P.apply_delta("shared", [{"type": "TAG", "bullet_id": "b-00001", "tag": "harmful"}])
    assert all(p.wait(60) == 0 for p in procs)
    b = P.get_bullet("shared", "b-00001")
    assert (b.helpful, b.harmful) == (45, 15)
    assert P.get_playbook("shared").current_version == 61


def test_a_worker_in_a_process_that_registered_no_job_kind_refuses_to_start(db_url) -> None:
    """It would otherwise take every queued job and fail it with "no handler"; the queue keeps them."""
    script = ("from core import jobs\n"
              "job_id = jobs.enqueue('episode', {})\n"
              "try:\n"
              "    jobs.run_worker(max_jobs=1)\n"
              "except jobs.NoHandlers as exc:\n"
              "    print('refused:', exc)\n"
              "print(jobs.get_job(job_id).status)\n")
    out = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused: no job kind is registered" in out.stdout and out.stdout.strip().endswith("queued")
