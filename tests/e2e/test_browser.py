"""The app in a real browser: Debian's Chromium driven by Playwright.

Runs as its own pytest invocation (`make test-e2e`). Screenshots of every
page land in artifacts/screenshots/ for a person to look at.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import SHOTS, chromium_page, running_app, sandbox_processes, settle, spinning, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    db = tmp_path_factory.mktemp("e2e") / "ace.db"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY")}
    env.update(ACE_DB_URL=f"sqlite:///{db}", ACE_WORKER_IN_APP="1")
    # A pending delta to approve, as a Curator in manual mode would leave it.
    seed = ("from core import playbook as P\n"
            "P.apply_delta('demo', [{'type': 'ADD', 'content': 'Guard divisions against empty inputs'}])\n"
            "print(P.propose_delta('demo', [{'type': 'ADD', 'section': 'pitfalls', "
            "'content': 'Check for None before calling methods on optional values', "
            "'justification': 'AttributeError seen in a run', 'evidence': \"'NoneType' object has no attribute\"}], "
            "reasoning='from the e2e seed'))\n")
    delta_id = subprocess.run([sys.executable, "-c", seed], env=env, cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()
    with running_app(env) as url:
        yield {"url": url, "db": str(db), "delta": delta_id, "env": env}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def page(server: dict[str, str]):  # type: ignore[no-untyped-def]
    with chromium_page() as pg:
        yield pg


def db_query(server: dict[str, str], code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], env=server["env"], cwd=ROOT, check=True,  # type: ignore[arg-type]
                          capture_output=True, text=True).stdout.strip()


def test_sandbox_only_run_through_the_playground(server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server["url"])
    page.get_by_text("Playground").first.wait_for()
    settle(page)
    page.get_by_role("button", name="Plot a sine wave (PNG result)").click()
    settle(page)
    page.get_by_role("button", name="▶ Run").click()
    page.get_by_text("PASSED").first.wait_for(timeout=60_000)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "1-playground-run.png"), full_page=True)
    status = db_query(server, "from core import views; print(views.episodes_frame()['status'].iloc[0])")
    assert status == "succeeded"


def test_trace_and_reflection_pages(server, page) -> None:  # type: ignore[no-untyped-def]
    episode = db_query(server, "from core import views; print(views.episodes_frame()['id'].iloc[0])")
    page.goto(f"{server['url']}/trace?episode={episode}")
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    page.get_by_text(episode).first.wait_for()
    page.get_by_text("PASSED").first.wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "2-trace.png"), full_page=True)
    page.goto(f"{server['url']}/reflection")
    page.get_by_text("No reflections yet").first.wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "3-reflections.png"), full_page=True)


def test_approve_a_pending_op_in_the_diff_viewer(server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server['url']}/playbook?playbook=demo&delta={server['delta']}")
    page.get_by_text("Check for None before calling methods").first.wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "4-playbook-review.png"), full_page=True)
    page.locator("button", has_text="Approve").first.click()  # staged, not applied yet
    page.locator("button", has_text="Apply 1 decision(s)").first.click()
    page.get_by_text("approved by reviewer").first.wait_for(timeout=30_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "5-playbook-approved.png"), full_page=True)
    out = db_query(server, "from core import playbook as P; pb = P.get_playbook('demo'); "
                           "print(pb.current_version, [b.content for b in P.active_bullets('demo')][-1])")
    assert out == "2 Check for None before calling methods on optional values"


def test_learning_curves(server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server['url']}/learning")
    page.get_by_text("Learning curves").first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "6-learning.png"), full_page=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox processes are told apart by their host uid (as root)")
def test_cancel_in_the_browser_stops_the_program_within_a_second(server, page) -> None:  # type: ignore[no-untyped-def]
    """The demo's worst moment before: Cancel left the program running to its 30 s wall clock."""
    before = sandbox_processes()
    episode = db_query(server, "from core.loop import TaskSpec, submit_episode\n"
                               "print(submit_episode(TaskSpec(task='spin forever', mode='sandbox_only', "
                               "code='while True:\\n    pass\\n', playbook_id='demo'))[0])")
    page.goto(f"{server['url']}/trace?episode={episode}")
    button = page.get_by_role("button", name="Cancel this episode")
    button.wait_for(timeout=30_000)
    wait_for(lambda: spinning(sandbox_processes() - before), timeout=30, message="the program never started")
    t0 = time.monotonic()
    button.click()
    wait_for(lambda: not spinning(sandbox_processes() - before), timeout=5, interval=0.02,
             message="the program still runs after Cancel")
    gone = time.monotonic() - t0
    stored = db_query(server, f"from core import views; print(views.get_episode({episode!r}).status)")
    assert stored == "cancelled"
    page.get_by_text(f"cancelled · {episode}").first.wait_for(timeout=5_000)  # said without a reload
    assert page.get_by_role("button", name="Cancel this episode").count() == 0
    assert gone < 1.0, gone
    settle(page)
    page.screenshot(path=str(SHOTS / "9-cancelled.png"), full_page=True)


def _version(server) -> int:  # type: ignore[no-untyped-def]
    return int(db_query(server, "from core import playbook as P; print(P.get_playbook('demo').current_version)"))


def _metric(page, label: str) -> str:  # type: ignore[no-untyped-def]
    return page.locator("[data-testid='stMetric']", has_text=label).locator(
        "[data-testid='stMetricValue']").first.inner_text()


def test_adding_a_bullet_shows_the_new_version_at_once(server, page) -> None:  # type: ignore[no-untyped-def]
    before = _version(server)
    page.goto(f"{server['url']}/playbook?playbook=demo&tab=Bullets")
    page.get_by_text("Add a bullet").first.click()
    page.get_by_label("Content").fill("Close files with a with-block, even in short scripts")
    page.get_by_role("button", name="Add").click()
    page.get_by_text(f"version {before + 1}").first.wait_for(timeout=30_000)  # the toast
    settle(page)
    assert _metric(page, "version") == str(before + 1)  # the header read the new version, no reload
    assert _version(server) == before + 1
    page.screenshot(path=str(SHOTS / "10-added.png"), full_page=True)


def test_an_import_shows_its_result_and_the_new_version(server, page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = _version(server)
    tips = tmp_path / "tips.md"
    tips.write_text("# Tips\n\n## testing\n- Run the failing test alone first\n- Read the whole traceback\n")
    page.goto(f"{server['url']}/playbook?playbook=demo")
    page.get_by_role("tab", name="Import / export").click()
    page.locator("input[type='file']").first.set_input_files(str(tips))
    assert "tab=Import" in page.url  # the URL follows the tab: a copied link reopens it
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("Imported 2 bullets from tips.md").first.wait_for(timeout=30_000)
    settle(page)
    assert _metric(page, "version") == str(before + 1)
    page.screenshot(path=str(SHOTS / "11-imported.png"), full_page=True)


def test_links_that_do_not_resolve_say_so_and_leave_the_url(server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server['url']}/playbook?playbook=nope&diff=99..100")
    page.get_by_text("There is no playbook 'nope'").first.wait_for()
    settle(page)
    assert "playbook=nope" in page.url  # not quietly switched to another playbook
    page.goto(f"{server['url']}/playbook?playbook=demo&delta=d-bogus")
    page.get_by_text("There is no delta 'd-bogus'").first.wait_for()
    page.goto(f"{server['url']}/playbook?playbook=demo&diff=99..100")
    page.get_by_text("asks for the diff '99..100'").first.wait_for()
    settle(page)
    assert "diff=99..100" in page.url
    page.screenshot(path=str(SHOTS / "12-bad-link.png"), full_page=True)
