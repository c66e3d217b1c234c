"""What a benchmark run does, fixed when it is created so a resume does exactly the same."""

import random
from typing import Literal, Optional

from pydantic import BaseModel, Field

from core.bench.suites import SuiteTask


class BenchConfig(BaseModel):
    """What a run does; stored on the run so a resume does exactly the same."""

    suite: str  # a suite name, or the resolved path of a .jsonl file
    epochs: int = Field(default=1, ge=0, le=100)
    split: float = Field(default=0.5, ge=0.0, le=1.0)  # fraction of tasks the ACE arm learns on
    limit: Optional[int] = Field(default=None, ge=1)
    concurrency: int = Field(default=2, ge=1, le=64)
    seed: int = 0
    max_iterations: int = Field(default=1, ge=1, le=10)  # 1: pass@1 with no refinement
    backend: Optional[Literal["local", "e2b"]] = None
    workflow: Literal["single", "review"] = "single"
    price_in: float = Field(default=0.0, ge=0)  # USD per million prompt tokens
    price_out: float = Field(default=0.0, ge=0)  # USD per million completion tokens
    train: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    # The run's tasks as they were when it was created (suites other than the packaged HumanEval): a worker on
    # another host runs them without the suite's file, and a resume runs the same tasks even if the file changed.
    tasks: list[SuiteTask] = Field(default_factory=list)


def parse_split(text: str) -> float:
    """'0.5', '50%' or '60/40' (train/test) -> the train fraction."""
    t = str(text).strip()
    try:
        if "/" in t:
            a, b = (float(x) for x in t.split("/", 1))
            value = a / (a + b)
        elif t.endswith("%"):
            value = float(t[:-1]) / 100
        else:
            value = float(t)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"invalid split {text!r}: use a train fraction like 0.5, 50% or 60/40") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"invalid split {text!r}: the train fraction must be between 0 and 1")
    return value


def split_tasks(tasks: list[SuiteTask], split: float, seed: int = 0,
                limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """A seeded, stable split of the first `limit` tasks into train and test ids."""
    ids = [t.id for t in tasks[:limit]]
    random.Random(seed).shuffle(ids)
    n_train = round(len(ids) * split)
    if 0 < split < 1 and len(ids) >= 2:  # a real split keeps at least one task on each side
        n_train = min(max(n_train, 1), len(ids) - 1)
    return ids[:n_train], ids[n_train:]
