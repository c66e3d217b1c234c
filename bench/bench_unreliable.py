"""Episodes against a misbehaving model, beside a well-behaved one in the same run (issue: real models).

Both arms run the same episodes end to end through core.loop, with the real openai client against
the fake OpenAI-compatible server on loopback and the real local sandbox. The misbehaving arm's
model answers each request badly with probability P (seeded): a reply that loops inside a JSON
array until the token cap, one cut short, prose instead of JSON, nulls in required fields, invented
bullet ids, a 429 with Retry-After, a 500, a reply slower than the call's deadline; a server that
refuses `json_schema` too. Target: every episode ends passed or failed (none "could not run").
Run: .venv/bin/python bench/bench_unreliable.py
"""

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["ACE_DB_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"

from tests.fake_llm import Delay, Endless, FakeLLM, Status, Truncated  # noqa: E402
from tests.scripted import add, cur, gen, refl  # noqa: E402

N = 30
P_BAD = 0.6
CALL_DEADLINE_S = 1.5
TASK = "Write total(xs) returning the sum of a list of numbers"
TESTS = "assert total([1, 2]) == 3\nassert total([]) == 0\n"
GOOD_CODE = "def total(xs):\n    return sum(xs)\n"


def role_of(req: dict[str, Any]) -> str:
    system = str((req.get("messages") or [{}])[0].get("content", ""))
    if "curator" in system:
        return "curator"
    if "reviewer of code executions" in system:
        return "reflector"
    return "generator"


def good(role: str, i: int) -> Any:
    if role == "generator":
        return gen(GOOD_CODE)
    if role == "reflector":
        return refl("sum() handles the empty list")
    return cur(add(f"use sum() for totals, case {i}"))


def bad(role: str, rng: random.Random) -> Any:
    options: list[Any] = [
        Endless('{"reasoning": "ok", "bullet_ids": [', '"1", '),
        Truncated('{"reasoning": "the code should'),
        "Sure! I think the best approach is to iterate over the list and add the numbers.",
        Status(429, "rate limited", {"Retry-After": "0.2"}),
        Status(500, "internal error"),
        Delay(CALL_DEADLINE_S + 0.5, {"reasoning": "too late"}),
    ]
    if role == "generator":
        options += [gen(GOOD_CODE, ["1", "12", "a whole sentence as an id"]),
                    f"Here is the program:\n```python\n{GOOD_CODE}```\nIt sums the list."]
    if role == "curator":
        options += [cur({"type": "ADD", "section": None, "content": None}, {"type": "TAG", "bullet_id": "b-99999",
                                                                            "tag": "helpful"})]
    if role == "reflector":
        options += [{"reasoning": None, "key_insight": None, "bullet_tags": [{"id": "7", "tag": "great"}]}]
    return rng.choice(options)


def run_arm(name: str, p_bad: float, reject_schema: bool) -> dict[str, Any]:
    from sqlmodel import func, select

    from core import config
    from core.llm.client import reset_mode_cache
    from core.loop import TaskSpec, run_episode
    from core.sandbox import get_sandbox
    from core.storage.db import read_session
    from core.storage.models import LLMCall
    from core.views import get_episode

    rng = random.Random(13)
    fake = FakeLLM(reject_json_schema=reject_schema)
    counter = {"i": 0}
    fake.default = lambda req: (bad(role_of(req), rng) if rng.random() < p_bad
                                else good(role_of(req), counter["i"]))
    fake.start()
    os.environ.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="bench", ACE_MODEL=f"fake-{name}",
                      ACE_LLM_TIMEOUT=str(CALL_DEADLINE_S), ACE_LLM_MAX_RETRIES="2")
    config.reset_settings()
    reset_mode_cache()
    rows: list[dict[str, Any]] = []
    with get_sandbox() as sandbox:
        for i in range(N):
            counter["i"] = i
            t0 = time.perf_counter()
            r = run_episode(TaskSpec(task=TASK, tests=TESTS, playbook_id=f"bench-{name}"), sandbox=sandbox)
            wall = time.perf_counter() - t0
            ep = get_episode(r.episode_id)
            assert ep is not None
            with read_session() as s:
                n_calls = s.exec(select(func.count()).select_from(LLMCall)
                                 .where(LLMCall.episode_id == r.episode_id)).one()
            rows.append({"status": ep.status, "calls": int(n_calls), "wall": wall, "learned": bool(r.version),
                         "attempts": ep.attempts})
    fake.stop()
    ended = sum(r["status"] in ("succeeded", "failed") for r in rows)
    return {"arm": name, "n": N, "ended": ended / N, "passed": sum(r["status"] == "succeeded" for r in rows) / N,
            "errors": N - ended, "learned": sum(r["learned"] for r in rows) / N,
            "calls": statistics.mean(r["calls"] for r in rows),
            "attempts": statistics.mean(r["attempts"] for r in rows),
            "wall": statistics.median(r["wall"] for r in rows), "wall_max": max(r["wall"] for r in rows)}


def main() -> None:
    arms = [run_arm("well-behaved", 0.0, False), run_arm("misbehaving", P_BAD, True)]
    print(f"{N} episodes per arm; misbehaving: {P_BAD:.0%} of replies bad, json_schema refused, "
          f"call deadline {CALL_DEADLINE_S} s")
    print(f"{'arm':<14} {'ended passed/failed':>20} {'passed':>7} {'errors':>7} {'learned':>8} "
          f"{'LLM calls/ep':>13} {'attempts/ep':>12} {'wall/ep med':>12} {'max':>7}")
    for a in arms:
        print(f"{a['arm']:<14} {a['ended']:>19.0%} {a['passed']:>7.0%} {a['errors']:>7} {a['learned']:>8.0%} "
              f"{a['calls']:>13.1f} {a['attempts']:>12.1f} {a['wall']:>10.2f} s {a['wall_max']:>5.1f} s")
    target = arms[1]["ended"] == 1.0
    print(f"target: every misbehaving episode ends passed or failed: {'OK' if target else 'MISSED'}")


if __name__ == "__main__":
    main()
