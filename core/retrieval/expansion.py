"""Query expansion: the model names a task's likely pitfalls, so retrieval can match strategies
that share none of the task's words.
"""

import logging
import threading
from collections import OrderedDict
from typing import Optional

from pydantic import BaseModel, Field

from core.config import Settings, get_settings

log = logging.getLogger(__name__)


class _Pitfalls(BaseModel):
    pitfalls: list[str] = Field(default_factory=list, description="3 to 6 short likely pitfalls or techniques")

    @classmethod
    def wire_schema(cls) -> dict[str, object]:
        """Bounded, so a grammar-constrained server cannot loop inside the list."""
        return {"type": "object", "additionalProperties": False, "required": ["pitfalls"],
                "properties": {"pitfalls": {"type": "array", "maxItems": 6,
                                            "items": {"type": "string", "minLength": 1, "maxLength": 200}}}}


_expansions: "OrderedDict[tuple[str, str], str]" = OrderedDict()
_exp_lock = threading.Lock()

_EXPAND_SYSTEM = ("You help retrieve strategies for a programming task. List 3 to 6 short phrases naming the "
                  "pitfalls, techniques or library functions most likely to matter for it. Use the usual "
                  "technical terms. Reply as JSON: {\"pitfalls\": [\"...\"]}.")


def expand_query(task: str, settings: Optional[Settings] = None) -> str:
    """The task plus model-written likely pitfalls, cached per task; the task alone on any failure."""
    s = settings or get_settings()
    if not s.llm_configured:
        return task
    key = (s.model, task)
    with _exp_lock:
        if key in _expansions:
            return _expansions[key]
    try:
        from core.llm.client import LLMClient

        res = LLMClient(s).structured("expand", [{"role": "system", "content": _EXPAND_SYSTEM},
                                                 {"role": "user", "content": task[:4000]}], _Pitfalls)
        extra = "; ".join(p.strip()[:200] for p in res.value.pitfalls[:6] if p.strip())
    except Exception as exc:  # LLMError and friends: retrieval must still answer
        log.warning("query expansion failed, using the task alone: %s", exc)
        return task
    out = f"{task}\nLikely pitfalls: {extra}" if extra else task
    with _exp_lock:
        _expansions[key] = out
        while len(_expansions) > 512:
            _expansions.popitem(last=False)
    return out


def clear_expansions() -> None:
    """Forget every cached expansion (tests): the next query asks the model again."""
    with _exp_lock:
        _expansions.clear()
