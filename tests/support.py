"""Plain helpers shared by the tests (the shared fixtures are in conftest.py)."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition not met") -> T:
    """Call `predicate` until it returns something truthy and return that.

    Fails the test (AssertionError) after `timeout` seconds with `message` (a string, or a callable
    evaluated at failure time) and the predicate's last value. An exception the predicate raises
    propagates at once: that is how a predicate says waiting longer is pointless (a child exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s; last value: {value!r})")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the CLI

ACE = str(Path(sys.executable).with_name("ace"))  # the installed console script


@dataclass
class Ran:
    """What one `ace` command did."""

    returncode: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------ the app

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def open_app(page: Optional[str] = None, **params: str) -> Any:
    """The app in Streamlit's AppTest with `params` in its URL, switched to `page`; fails on any exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=30)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@contextmanager
def running_app(env: dict[str, str]) -> Iterator[str]:
    """`streamlit run app.py` on a free port with `env`; yields its URL, stops it afterwards."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=Path(APP).parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.3, message="streamlit did not start")
    except AssertionError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}: " + (proc.stdout.read() if proc.stdout else b"").decode()[-2000:]) from None
    try:
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if the process has not ended within `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ the browser

SHOTS = Path(APP).parent / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by `make test`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page in headless Chromium (playwright), 1400x1000, 30 s timeouts; fails when Chromium is missing."""
    import pytest
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()


# Tests of what exists only on SQLite (its raw DBAPI path, FTS5, PRAGMAs, a full disk) run there even when
# the suite runs on PostgreSQL (`--db=postgresql`).
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def settle(page: Any) -> None:
    """Wait until the page is drawn: Streamlit's script has finished (its status widget is gone), the network
    has been quiet for a moment where it gets quiet, and canvases (dataframes, plots) have drawn. A loaded
    machine can keep component frames busy past any fixed wait; the finished script is what counts."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    try:
        page.wait_for_load_state("networkidle", timeout=10_000)
    except PlaywrightTimeout:
        pass
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    page.wait_for_timeout(800)


# ------------------------------------------------------------------ sandbox processes


def sandbox_processes() -> set[int]:
    """Processes running as one of the sandbox's host uids (as root every sandbox gets one)."""
    from core.sandbox.isolation import HOST_UID_BASE, HOST_UID_COUNT

    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
        if HOST_UID_BASE <= uid < HOST_UID_BASE + HOST_UID_COUNT:
            found.add(int(entry))
    return found


def spinning(pids: set[int]) -> set[int]:
    """Those of `pids` on a CPU or ready for one (state R): the busy-looping program, not an idle server."""
    out = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                out.add(pid)
        except (OSError, IndexError):
            pass
    return out
