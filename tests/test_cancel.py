"""Cancel stops an episode within a second, whatever step runs and whichever process runs it.

The program in the sandbox is killed (its processes are checked, not only the label), a model call in
flight is abandoned, and the episode and its job both end "cancelled".
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import jobs
from core.loop import TaskSpec, submit_episode
from core.storage.db import read_session
from core.storage.models import Episode
from tests.fake_llm import Delay
from tests.scripted import gen
from tests.support import sandbox_processes, spinning, wait_for

ACE = str(Path(sys.executable).with_name("ace"))
SPIN = "while True:\n    pass\n"
LIMIT_S = 1.0  # the bound, from the click to the episode's stored end


def _cmdlines(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    return out


def episode_status(episode_id: str) -> str:
    with read_session() as s:
        return s.get(Episode, episode_id).status


def cancel_and_time(job_id: str, episode_id: str) -> float:
    """Cancel; seconds until the episode and its job are stored as cancelled."""
    t0 = time.monotonic()
    jobs.cancel(job_id)
    wait_for(lambda: episode_status(episode_id) == "cancelled" and jobs.get_job(job_id).status == "cancelled",
             timeout=30, interval=0.01, message="the episode was not cancelled")
    return time.monotonic() - t0


def in_thread_worker() -> threading.Thread:
    t = threading.Thread(target=jobs.run_worker, kwargs={"max_jobs": 1, "poll_s": 0.05}, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox processes are told apart by their host uid (as root)")
@pytest.mark.parametrize("forkserver", ["1", "0"])
def test_cancel_kills_a_running_program_within_a_second(db_url: str, settings_env, forkserver: str) -> None:
    settings_env(ACE_SANDBOX_FORKSERVER=forkserver, ACE_SANDBOX_TIMEOUT="60")
    before = sandbox_processes()
    episode_id, job_id = submit_episode(TaskSpec(task="spin", mode="sandbox_only", code=SPIN, playbook_id="c"))
    worker = in_thread_worker()
    wait_for(lambda: spinning(sandbox_processes() - before), timeout=30, message="the program never started")
    time.sleep(0.3)  # well inside the run
    took = cancel_and_time(job_id, episode_id)
    assert took < LIMIT_S, took
    # the program is gone (SIGKILL was sent; the kernel takes a moment to reap it); an idle fork server
    # started for the next run may stay
    wait_for(lambda: not spinning(sandbox_processes() - before), timeout=0.5, interval=0.01,
             message=f"still running: {_cmdlines(spinning(sandbox_processes() - before))}")
    worker.join(10)
    assert not worker.is_alive()


def test_cancel_abandons_a_model_call_in_flight(fake_llm) -> None:
    fake_llm.reply(Delay(60, gen("print(1)\n")))  # the model takes a minute
    episode_id, job_id = submit_episode(TaskSpec(task="Print 1", expected_output="1", playbook_id="c"))
    worker = in_thread_worker()
    wait_for(lambda: len(fake_llm.chat_requests()) == 1, timeout=30, message="the model was never called")
    took = cancel_and_time(job_id, episode_id)
    assert took < LIMIT_S, took
    assert len(fake_llm.chat_requests()) == 1  # no retry, no next attempt
    worker.join(10)
    assert not worker.is_alive()


@pytest.mark.both_dbs
def test_cancel_reaches_a_worker_in_another_process(db_url: str) -> None:
    """SQLite: the worker reads the flag a few times a second; PostgreSQL: it is notified."""
    worker = subprocess.Popen([ACE, "worker", "--poll", "0.1"], env={**os.environ, "ACE_SANDBOX_TIMEOUT": "60"},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert worker.stdout is not None and "waiting for jobs" in worker.stdout.readline()
        episode_id, job_id = submit_episode(TaskSpec(task="spin", mode="sandbox_only", code=SPIN, playbook_id="c"))
        wait_for(lambda: episode_status(episode_id) == "running", timeout=30, message="the episode never started")
        time.sleep(1.0)  # the program runs, the job's watchers listen
        took = cancel_and_time(job_id, episode_id)
        assert took < LIMIT_S, took
        assert worker.poll() is None  # the worker lives on for the next job
    finally:
        worker.kill()
        worker.wait(10)


def test_cancel_ends_an_agents_learn_request_as_cancelled(fake_llm) -> None:
    """An agent's episodes/learn job waits on the Reflector: cancelled, its episode says so (not 'running')."""
    fake_llm.reply(Delay(60, {"reasoning": "too late"}))
    job_id = jobs.enqueue("learn", {"playbook_id": "agents", "user_message": "task", "trajectory": "it failed"})
    worker = in_thread_worker()
    wait_for(lambda: len(fake_llm.chat_requests()) == 1, timeout=30, message="the Reflector was never called")
    episode_id = jobs.get_job(job_id).payload["episode_id"]
    took = cancel_and_time(job_id, episode_id)
    assert took < LIMIT_S, took
    worker.join(10)
