"""How long the heavy pages take, beside an empty page: in Chromium (what a person waits for) and in AppTest.

Data: a playbook of 5,000 bullets and 200 versions, 10,000 episodes, and a playbook opened right after a
5,000-bullet import. Chromium: the real app (`streamlit run`), each load in a new browser context (cold:
no cache, a new session); "first content" is when the page's main content is on screen, "settled" when
the script has finished. Target: first content within 2 s. Run: .venv/bin/python bench/bench_ui.py
"""

import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
tmp = tempfile.mkdtemp()
os.environ["ACE_DB_URL"] = f"sqlite:///{tmp}/bench.db"
os.environ["ACE_WORKER_IN_APP"] = "0"
for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(k, None)

from streamlit.testing.v1 import AppTest  # noqa: E402

from core import playbook as P  # noqa: E402
from core.playbook import portability  # noqa: E402
from core.storage.db import write_session  # noqa: E402
from core.storage.models import Episode, utcnow  # noqa: E402

WORDS = ("cache retry parse json regex pandas index sort merge async await timeout encode utf8 path file csv "
         "numpy float round int divide zero empty list dict key value loop recursion memo").split()


def populate() -> None:
    rnd = random.Random(7)
    bullets = [{"id": f"py-{i:05d}", "section": rnd.choice(["strategies", "pitfalls", "snippets"]),
                "content": " ".join(rnd.choices(WORDS, k=14)) + f" #{i}", "helpful": rnd.randint(0, 9),
                "harmful": rnd.randint(0, 3)} for i in range(1, 4802)]
    portability.import_playbook("big", json.dumps({"format": "ace-playground/1", "playbook": {"name": "big"},
                                                   "bullets": bullets}))
    for i in range(199):
        P.apply_delta("big", [{"type": "ADD", "content": f"version bullet {i} " + " ".join(rnd.choices(WORDS, k=10))}])
    now = utcnow()
    with write_session() as s:
        for i in range(10_000):
            ok = rnd.random() < min(0.9, 0.3 + i / 15000)
            s.add(Episode(playbook_id="big", task=f"task {i}", status="succeeded" if ok else "failed", success=ok,
                          attempts=rnd.randint(1, 3), tokens=rnd.randint(500, 4000),
                          created_at=now + timedelta(seconds=i), started_at=now + timedelta(seconds=i),
                          finished_at=now + timedelta(seconds=i + rnd.uniform(2, 20))))


def render(page: str | None, **params: str) -> float:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page is None:
        t0 = time.perf_counter()
        at.run()
        return time.perf_counter() - t0
    at.switch_page(page)
    t0 = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - t0
    assert not at.exception, [e.value for e in at.exception]
    return elapsed


def best_of(n: int, fn: Callable[..., float], *args: Any, **kw: Any) -> float:
    return min(fn(*args, **kw) for _ in range(n))


# page path, query, what marks its first content, label
PAGES = [
    ("reflection", "", "h1", "baseline: reflections page (empty)"),
    ("playbook", "?playbook=big", "[data-testid='stMetric']", "playbook page: 5,000 bullets, 200 versions"),
    ("playbook", "?playbook=big&diff=0..200", "[data-testid='stMetric']", "  ... opened on a 200-version diff"),
    ("trace", "", "[data-testid='stDataFrame']", "trace page: 10,000 episodes"),
    ("learning", "?playbook=big", "[data-testid='stMetric']", "learning page: 10,000 episodes"),
    ("playbook", "?playbook=imported", "[data-testid='stMetric']", "playbook page right after a 5,000-bullet import"),
]


def chromium_loads(url: str, runs: int = 3) -> list[tuple[str, float, float]]:
    """(label, first content s, settled s) per page: the median of `runs` cold loads."""
    from playwright.sync_api import sync_playwright

    from tests.support import CHROMIUM, CHROMIUM_ARGS

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for path, query, marker, label in PAGES:
                firsts, settled = [], []
                for i in range(runs + 1):
                    if path == "playbook" and query == "?playbook=imported" and i == 1:
                        fresh_import()  # the measured loads start right after an import (the first is a warm-up)
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{url}/{path}{query}", wait_until="commit")
                    page.locator(marker).first.wait_for(timeout=120_000)
                    first = time.perf_counter() - t0
                    page.wait_for_function(
                        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
                    done = time.perf_counter() - t0
                    ctx.close()
                    if i:  # the first load of each page warms the server's imports: not counted
                        firsts.append(first)
                        settled.append(done)
                out.append((label, sorted(firsts)[len(firsts) // 2], sorted(settled)[len(settled) // 2]))
        finally:
            browser.close()
    return out


def fresh_import() -> None:
    """Replace the `imported` playbook's bullets with 5,000 new ones, as the page's Import button does."""
    rnd = random.Random(time.time_ns())
    text = "\n".join(f"- {' '.join(rnd.choices(WORDS, k=12))} #{i}" for i in range(5000))
    portability.import_playbook("imported", text.encode(), replace=True)


def chromium_table() -> None:
    from tests.support import CHROMIUM, running_app

    if not Path(CHROMIUM).exists():
        print(f"\nChromium ({CHROMIUM}) is missing: `make system-deps` installs it; browser figures skipped")
        return
    fresh_import()
    env = {**os.environ, "ACE_WORKER_IN_APP": "0"}
    with running_app(env) as url:
        rows = chromium_loads(url)
    print(f"\n{'page (Chromium, cold, median of 3)':52} {'first content':>14} {'settled':>9}")
    for label, first, done in rows:
        verdict = "" if label.startswith("baseline") else ("   target < 2 s: " + ("OK" if first < 2 else "MISSED"))
        print(f"{label:52} {first:>12.2f} s {done:>7.2f} s{verdict}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    populate()
    print(f"populated 5,000 bullets / 200 versions / 10,000 episodes in {time.perf_counter() - t0:.1f} s")
    chromium_table()
    print()
    base = best_of(3, render, "app_pages/reflection.py")
    pb = best_of(3, render, "app_pages/playbook.py", playbook="big")
    learn = best_of(3, render, "app_pages/learning.py", playbook="big")
    print(f"{'page':42} {'AppTest render (best of 3)':>28}")
    print(f"{'baseline: reflections page (empty)':42} {base:>26.2f} s")
    print(f"{'playbook page: 5,000 bullets, 200 versions':42} {pb:>26.2f} s   "
          f"target < 2 s: {'OK' if pb < 2 else 'MISSED'}")
    print(f"{'learning page: 10,000 episodes':42} {learn:>26.2f} s   target < 2 s: {'OK' if learn < 2 else 'MISSED'}")
