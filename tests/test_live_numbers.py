"""Numbers a person watches while an episode runs are true at each step, and long output keeps its end."""

import threading

from core import views
from core.loop import TaskSpec, episode_events, run_episode
from tests.scripted import add, cur, gen, refl
from tests.support import open_app, wait_for

SLOW = "import time\ntime.sleep(2)\nprint('done')\n"


def test_attempts_tokens_and_model_time_show_before_the_run_ends(fake_llm) -> None:
    fake_llm.reply(gen(SLOW), refl(), cur(add("Sleep less in tests")))
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=run_episode(TaskSpec(task="sleep", expected_output="done",
                                                                          playbook_id="live"))))
    t.start()
    wait_for(lambda: views.episodes_frame() is not None and not views.episodes_frame().empty, timeout=30)
    episode_id = views.episodes_frame()["id"].iloc[0]
    wait_for(lambda: any(e.kind == "generate" for e in episode_events(episode_id)), timeout=30,
             message="the generate step never ended")
    ep = views.get_episode(episode_id)
    assert ep.status == "running"  # the program still sleeps
    assert ep.attempts == 1 and ep.tokens > 0 and ep.llm_ms > 0
    t.join(60)
    assert out["r"].status == "succeeded"


def test_a_run_without_tests_says_how_it_was_judged(db_url) -> None:
    r = run_episode(TaskSpec(task="hello", mode="sandbox_only", code="print('hi')", playbook_id="p"))
    at = open_app("app_pages/trace.py", episode=r.episode_id)
    shown = [s.value for s in at.success]
    assert any("no tests: judged by exit code" in s for s in shown), shown
    assert not any("0/0" in s for s in shown)


def test_long_output_is_clipped_to_its_head_and_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(100_000))
    shown = views.clip_output(text, keep=20_000)
    assert shown.startswith("line 0\n") and shown.endswith("line 99999\n")
    assert "KB cut here" in shown and len(shown) < 20_200
    assert views.clip_output("short") == "short"
