"""The one loop, where the README and every entry point find it; `core.episodes` holds its parts.

    from core.loop import TaskSpec, run_episode
    run_episode(TaskSpec(task="Write mean(xs)", tests="assert mean([]) == 0", playbook_id="py"))
"""

from core.episodes.events import EventSink, TraceEvent
from core.episodes.learning import create_learn_episode, learn, reflect_and_curate
from core.episodes.loop import run_episode
from core.episodes.spec import EpisodeResult, Roles, TaskSpec
from core.episodes.store import (
    cancel_episode,
    create_episode,
    episode_events,
    learned_delta,
    mark_interrupted,
    new_episode,
    rerun_spec,
    submit_episode,
)
from core.episodes.trace import Trace
from core.playbook.lines import marked_bullet_ids as extract_bullet_ids

__all__ = ["EpisodeResult", "EventSink", "Roles", "TaskSpec", "Trace", "TraceEvent", "cancel_episode", "create_episode",
           "create_learn_episode", "episode_events", "extract_bullet_ids", "learn", "learned_delta",
           "mark_interrupted", "new_episode", "reflect_and_curate", "rerun_spec", "run_episode", "submit_episode"]
