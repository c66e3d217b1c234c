"""What redaction costs a write: `scrub_for_storage` on 100k-character texts, beside encoding the same
text to UTF-8 (what the database driver does with every string anyway), in the same run.
Target: under 5 ms per 100k characters, plain or holding secrets.
Run: .venv/bin/python bench/bench_redaction.py
"""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(OPENAI_API_KEY="corp-proxy-credential-0f3a9c77d2", ACE_SERVICE_TOKEN="svc-token-5be1c0ffee-9d")

REPEAT = 30


def timed_ms(fn: Callable[[], object]) -> float:
    runs = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def main() -> None:
    from core.redaction import scrub_for_storage

    words = "cache retry parse json regex pandas index sort merge async await timeout encode".split()
    plain = " ".join(words[i % len(words)] for i in range(20_000))[:100_000]
    keyed = plain[:50_000] + f" sk-{'k' * 30} Bearer {'b' * 20} corp-proxy-credential-0f3a9c77d2 " + plain[50_000:]
    texts = {"plain": plain, "with secrets": keyed, "JSON with secrets": json.dumps({"out": keyed}),
             "with a NUL": plain + "\x00"}
    print(f"median of {REPEAT} runs per 100k-character text:")
    print(f"{'text':<20} {'utf-8 encode':>13} {'scrub':>9}")
    worst = 0.0
    for name, text in texts.items():
        base = timed_ms(lambda: text.encode("utf-8"))  # noqa: B023  # called at once, in this iteration
        scrub = timed_ms(lambda: scrub_for_storage(text))  # noqa: B023
        worst = max(worst, scrub)
        print(f"{name:<20} {base:>10.3f} ms {scrub:>6.3f} ms")
    print(f"target: scrub under 5 ms per 100k characters: {'OK' if worst < 5 else 'MISSED'} (worst {worst:.2f} ms)")


if __name__ == "__main__":
    main()
