"""Sample tasks shipped in data/samples.jsonl, one click away in the playground."""

import json
from typing import Any

from core.config import DATA_DIR
from core.episodes.spec import TaskSpec
from core.episodes.store import submit_episode
from core.playbook import count_bullets, get_or_create_playbook
from core.playbook.portability import import_playbook


def load_samples() -> list[dict[str, Any]]:
    path = DATA_DIR / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# A first visit's playbook: a few strategies the sample tasks need, so a newcomer sees what a model reads.
STARTER_PLAYBOOK = "starter"
STARTER_BULLETS = """## pitfalls
- Guard against empty inputs before dividing by their length: mean([]) must not raise ZeroDivisionError
- Read the tests before writing code: they say what edge cases count

## strategies
- Use the standard library first (statistics, collections.Counter, itertools) before writing loops by hand
"""


def first_run(with_model: bool) -> str:
    """A newcomer's first episode, on the first sample task: written by the model when one is configured,
    else the sample's own (buggy) code run in the sandbox, beside the starter playbook that would have
    told a model how to avoid the bug. Returns the queued episode's id."""
    sample = load_samples()[0]
    get_or_create_playbook(STARTER_PLAYBOOK)
    if count_bullets(STARTER_PLAYBOOK) == 0:
        import_playbook(STARTER_PLAYBOOK, STARTER_BULLETS.encode(), actor="first visit")
    spec = TaskSpec(task=sample["task"], language=sample.get("language", "python"), tests=sample.get("tests"),
                    expected_output=sample.get("expected_output"), playbook_id=STARTER_PLAYBOOK,
                    mode="llm" if with_model else "sandbox_only",
                    code=None if with_model else sample.get("code"))
    return submit_episode(spec)[0]
