"""Hostile text in a real browser: no request to a host a bullet names, no link to it, the text shown as stored.

A playbook holds a bullet with a remote image, a link, an overlay `<a>` and markup; an episode's trace,
reflection and model calls carry hostile reasoning; its pending delta removes a bullet whose id is an overlay
`<a href=... style="position:fixed">` and tags a bullet with a hostile "why" (tests/test_ui_safety.py
seeds them). The review, trace and reflection pages are opened in Debian's Chromium, every expander opened,
and a small HTTP server on the host the text names records any request the browser makes to it.

Runs as its own pytest invocation (`make test-e2e`).
"""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import SHOTS, chromium_page, free_port, running_app, settle

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SEEN: list[str] = []  # every URL the browser asked for, a second witness beside the recording server
PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360"
                      "000002000001e221bc330000000049454e44ae426082")


class Recorder(ThreadingHTTPServer):
    requests: list[str]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PIXEL)))
        self.end_headers()
        self.wfile.write(PIXEL)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    """The host the hostile text points at: it records every request and answers with a pixel."""
    srv = Recorder(("127.0.0.1", free_port()), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    httpx.get(f"http://127.0.0.1:{srv.server_address[1]}/self-check", timeout=5)  # it really records
    assert srv.requests == ["/self-check"]
    srv.requests.clear()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def app(recorder: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db = tmp_path_factory.mktemp("e2e-hostile") / "ace.db"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY")}
    env.update(ACE_DB_URL=f"sqlite:///{db}", ACE_WORKER_IN_APP="0")
    base = f"http://127.0.0.1:{recorder.server_address[1]}"
    seed = f"import json; from tests.test_ui_safety import seed_hostile; print(json.dumps(seed_hostile({base!r})))"
    seeded = json.loads(subprocess.run([sys.executable, "-c", seed], env=env, cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
    with running_app(env) as url:
        yield {"url": url, "base": base, **seeded}


@pytest.fixture(scope="module")
def browser_page(app: dict[str, Any]) -> Iterator[Any]:
    with chromium_page() as pg:
        SEEN.clear()
        pg.on("request", lambda r: SEEN.append(r.url))
        yield pg


def open_every_expander(page: Any) -> None:
    for summary in page.locator("[data-testid='stExpander'] summary").all():
        if summary.get_attribute("aria-expanded") != "true":
            summary.click()
    settle(page)


# Every link and image source in a frame, resolved as the browser resolves it: (tag, url, host).
POINTERS = "a[href], area[href], img, image, source, video, audio, iframe, object, embed, link[href]"
POINTERS_JS = """() => [...document.querySelectorAll('""" + POINTERS + """')].map(e => {
    const raw = e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('srcset') || e.getAttribute('data')
                || e.getAttribute('xlink:href') || '';
    let host = '';
    try { host = new URL(raw.split(' ')[0], document.baseURI).host; } catch (err) { host = '?' + raw; }
    return [e.tagName.toLowerCase(), raw, host];
})"""


def assert_nothing_points_at_the_host(page: Any, app: dict[str, Any], recorder: Recorder) -> None:
    host = app["base"].removeprefix("http://")
    for frame in page.frames:
        pointers = frame.evaluate(POINTERS_JS)
        assert pointers, f"no links or images at all in {frame.url}: the check would see nothing"
        hits = [p for p in pointers if p[2] == host or host in p[2]]
        assert hits == [], f"links or images pointing at {host} in {frame.url}: {hits}"
        assert frame.locator("a[style*='position']").count() == 0, "an overlay link"
        assert frame.locator(".katex").count() == 0, "typeset math"
    for name in ("click", "overlay", "see", "hostile-id", "l"):
        assert page.get_by_role("link", name=name, exact=True).count() == 0, f"a link named {name!r}"
    page.wait_for_timeout(500)  # a late image request would have landed by now
    assert [u for u in SEEN if u.split("/")[2:3] == [host]] == []
    assert recorder.requests == [], f"the browser fetched {recorder.requests} from the hostile host"


def shown(text: str) -> str:
    """Markdown-rendered text as read: without the invisible word joiners (U+2060) ui.safe puts into URLs,
    emails and arrows so that Streamlit does not turn them into links or signs after parsing."""
    return text.replace("\u2060", "")


def visible_texts(page: Any, exact: str) -> list[str]:
    """The inner text of every element whose whole text is `exact` (whitespace as the browser shows it)."""
    return [t.strip() for t in page.get_by_text(exact, exact=True).all_inner_texts()]


def visit(page: Any, app: dict[str, Any], recorder: Recorder, path: str, shown_text: str, shot: str,
          state: str = "visible", expand: bool = False) -> None:
    """Open a page holding the hostile data, wait for `shown_text`, draw it all and keep a screenshot; nothing
    on it may point at the host."""
    page.goto(f"{app['url']}/{path}")
    page.get_by_text(shown_text, exact=True).first.wait_for(state=state)
    settle(page)
    if expand:
        open_every_expander(page)
    page.screenshot(path=str(SHOTS / shot), full_page=True)
    assert_nothing_points_at_the_host(page, app, recorder)


def test_the_review_shows_the_hostile_delta_as_text(app: dict[str, Any], browser_page: Any,
                                                    recorder: Recorder) -> None:
    page = browser_page
    tag_line = f"[{app['bullet_id']}] {app['bullet']} → helpful +1"
    visit(page, app, recorder, f"playbook?playbook={app['playbook']}&delta={app['delta']}", tag_line,
          "hostile-1-review.png")
    # the hostile bullet, exactly as stored, in the TAG op; the REMOVE op's id as the characters it is
    assert visible_texts(page, tag_line) == [tag_line]
    remove = page.locator("[data-testid='stHtml']", has_text="hostile-id").first.inner_text()
    assert app["bad_id"] in remove
    assert visible_texts(page, f"why: {app['why']}") and visible_texts(page, f"evidence: {app['why']}")
    # markdown with escaped text in it (the delta's header) shows the characters too
    header = shown(page.locator("[data-testid='stMarkdownContainer']", has_text="from a run of").first.inner_text())
    assert f"Task {app['why']}" in header
    # the page is still usable: nothing covers it
    page.get_by_role("tab", name="Bullets").click()
    settle(page)
    assert_nothing_points_at_the_host(page, app, recorder)


def test_the_trace_shows_hostile_reasoning_as_text(app: dict[str, Any], browser_page: Any,
                                                   recorder: Recorder) -> None:
    page = browser_page
    visit(page, app, recorder, f"trace?episode={app['episode']}", f"Reasoning: {app['why']}",
          "hostile-2-trace.png", state="attached", expand=True)
    assert visible_texts(page, f"Reasoning: {app['why']}")
    labels = [shown(t) for t in page.locator("[data-testid='stExpander'] summary").all_inner_texts()]
    assert any(app["why"] in label for label in labels), labels  # the reflect step's hostile role, literally
    caption = shown(page.locator("[data-testid='stCaptionContainer']", has_text="model model").first.inner_text())
    assert f"model model {app['why']}" in caption


def test_the_reflection_shows_hostile_text_as_text(app: dict[str, Any], browser_page: Any,
                                                   recorder: Recorder) -> None:
    page = browser_page
    tagged = f"👍 helpful [{app['bullet_id']}] {app['bullet']}"
    visit(page, app, recorder, f"reflection?episode={app['episode']}", tagged, "hostile-3-reflection.png",
          expand=True)
    assert visible_texts(page, tagged) == [tagged]
    assert visible_texts(page, app["why"])  # the Reflector's fields, literally
    task = shown(page.locator("[data-testid='stMarkdownContainer']", has_text="Task").first.inner_text())
    assert task.strip() == f"Task Task {app['why']}"
