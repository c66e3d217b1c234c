"""What a model call can end in, and what it spent on the way.

Every error carries `spent` (tokens, time, calls, cost of every request made, failed ones too), so
counters stay true however a call ends, and `raw`, the last reply text, so the trace keeps it.
`LLMUnavailable` means no model can be reached at all (an episode "could not run"); every other
`LLMError` is one unusable answer, which costs the caller an attempt and nothing more.
"""

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Spent:
    """What one role call cost, all its requests (retries, repair round, refused modes) included."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    calls: int = 0
    cost: float = 0.0
    call_ids: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Spent") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_ms += other.latency_ms
        self.calls += other.calls
        self.cost += other.cost
        self.call_ids += other.call_ids


class LLMError(RuntimeError):
    """The model could not give a usable answer; the message says why."""

    def __init__(self, message: str, *, spent: Optional[Spent] = None, raw: Optional[str] = None):
        super().__init__(message)
        self.spent = spent or Spent()
        self.raw = raw


class LLMUnavailable(LLMError):
    """No model answers at all (nothing listening, a refused key, an unknown model): nothing can run."""


class LLMNotConfigured(LLMUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "No language model is configured. Set OPENAI_API_KEY (OpenAI), or OPENAI_BASE_URL "
            "(a local OpenAI-compatible server such as Ollama or vLLM; any key then works), "
            "and ACE_MODEL, in the environment or in .env."
        )


class LLMOutputError(LLMError):
    """A reply came but could not be used (not JSON, wrong shape, or cut off at the token cap)."""


class LLMTimeout(LLMError):
    """The call's deadline (or the episode's time budget) passed before a usable reply came."""
