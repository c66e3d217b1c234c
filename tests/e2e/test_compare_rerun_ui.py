"""In Chromium: from a benchmark's per-task row to its baseline and ACE episodes side by side, and from an
episode to a prefilled re-run that completes. The model is the fake OpenAI-compatible server."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.fake_llm import FakeLLM
from tests.scripted import unhelpful_model
from tests.support import SHOTS, chromium_page, running_app, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    db = tmp_path_factory.mktemp("e2e-compare") / "ace.db"
    fake = FakeLLM()
    fake.default = unhelpful_model
    fake.start()
    env = {k: v for k, v in os.environ.items() if k not in ("E2B_API_KEY",)}
    env.update(ACE_DB_URL=f"sqlite:///{db}", ACE_WORKER_IN_APP="1", OPENAI_BASE_URL=fake.base_url,
               OPENAI_API_KEY="sk-e2e-fake", ACE_MODEL="fake-model", ACE_LLM_MAX_RETRIES="0")
    try:
        with running_app(env) as url:
            yield {"url": url, "env": env}  # type: ignore[misc]
    finally:
        fake.stop()


def query(server: dict[str, str], code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], env=server["env"], cwd=ROOT, check=True,  # type: ignore[arg-type]
                          capture_output=True, text=True).stdout.strip()


def test_from_a_benchmark_task_to_its_comparison_and_on_to_a_rerun(server) -> None:  # type: ignore[no-untyped-def]
    run_id = query(server, "from core import bench; print(bench.start_bench('python', epochs=1, split=0.5, "
                           "limit=2, concurrency=1))")
    with chromium_page() as page:
        page.goto(server["url"])  # the app's first page load starts its worker, which runs the benchmark
        wait_for(lambda: query(server, f"from core import bench; print(bench.bench_progress({run_id!r})['status'])")
                 == "done", timeout=120, interval=1.0, message="the benchmark never finished")
        page.goto(f"{server['url']}/benchmarks?run={run_id}")
        page.get_by_text("Per task: the baseline against ACE").first.wait_for(timeout=30_000)
        page.locator("[data-testid='stMain'] a", has_text="compare").first.click()  # not the sidebar's "Compare"
        page.get_by_text("Compare episodes").first.wait_for()
        # page links navigate inside the app (no page load): wait for the address the link set
        page.wait_for_function("() => location.pathname.endsWith('/compare') && location.search.includes('b=')")
        a = page.url.split("a=")[1].split("&")[0]
        b = page.url.split("b=")[1].split("&")[0]
        baseline_and_ace = query(server, "from core import views; print(views.get_episode("
                                         f"{a!r}).bench_run_id, views.get_episode({b!r}).bench_run_id)")
        assert baseline_and_ace == f"{run_id} {run_id}"
        page.get_by_text("Attempt 1").first.wait_for()
        page.screenshot(path=str(SHOTS / "13-compare.png"), full_page=True)

        page.locator("[data-testid='stMain'] a", has_text="B: re-run with edits").first.click()
        page.get_by_text(f"Re-running episode {b} with edits").first.wait_for(timeout=30_000)
        task = query(server, f"from core import views; print(views.get_episode({b!r}).task)").strip()
        # the form arrives after the banner above it: wait for the prefilled text rather than read it at once
        expect(page.get_by_label("Task")).to_have_value(task, timeout=30_000)
        page.get_by_label("Task").fill(task + "\nPrint exactly the answer, nothing else.")
        page.screenshot(path=str(SHOTS / "14-rerun-prefilled.png"), full_page=True)
        page.get_by_role("button", name="▶ Run").click()
        wait_for(lambda: query(server, "from core.storage.db import read_session\n"
                                       "from core.storage.models import Episode\n"
                                       "from sqlmodel import select\n"
                                       "with read_session() as s:\n"
                                       f"    e = s.exec(select(Episode).where(Episode.rerun_of == {b!r})).first()\n"
                                       "    print(e.status if e else 'none')") in ("succeeded", "failed"),
                 timeout=60, interval=0.5, message="the re-run never completed")
        page.get_by_text("Open in the trace viewer").first.wait_for()
        page.screenshot(path=str(SHOTS / "15-rerun-done.png"), full_page=True)
