"""Loop overhead per episode, excluding the LLM and the sandbox (target <= 20 ms).

Episodes run end to end through core.episodes.loop with the real openai client against
the fake OpenAI-compatible server on loopback and the real local sandbox; the
overhead is wall time minus the time inside LLM calls and sandbox runs.
Run: .venv/bin/python bench/bench_loop.py
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["ACE_DB_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"

from tests.fake_llm import FakeLLM  # noqa: E402
from tests.scripted import add, cur, gen, refl  # noqa: E402

N = 30


def main() -> None:
    fake = FakeLLM().start()
    os.environ.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="bench", ACE_MODEL="fake")
    from core import config

    config.reset_settings()
    from core import playbook as P
    from core.loop import TaskSpec, run_episode
    from core.sandbox import get_sandbox

    P.apply_delta("bench", [{"type": "ADD", "content": f"strategy {i} about lists and sums"} for i in range(50)])
    rows = []
    with get_sandbox() as sandbox:
        for i in range(N):
            fake.reply(gen("def total(xs):\n    return sum(xs)\n"), refl(), cur(add(f"insight number {i} on sums")))
            t0 = time.perf_counter()
            r = run_episode(TaskSpec(task="Write total(xs)", tests="assert total([1, 2]) == 3\n",
                                     playbook_id="bench"), sandbox=sandbox)
            wall = (time.perf_counter() - t0) * 1000
            from core.views import get_episode

            ep = get_episode(r.episode_id)
            assert ep is not None and r.success, r
            rows.append((wall, ep.llm_ms, ep.sandbox_ms, wall - ep.llm_ms - ep.sandbox_ms))
    fake.stop()
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"{N} episodes (1 attempt, reflect, curate, auto-apply), medians per episode:")
    print(f"{'wall':>10} {'in LLM':>10} {'in sandbox':>11} {'loop overhead':>14}")
    print(f"{med[0]:8.1f}ms {med[1]:8.1f}ms {med[2]:9.1f}ms {med[3]:12.1f}ms   target overhead <= 20 ms: "
          f"{'OK' if med[3] <= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
