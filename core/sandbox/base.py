"""The Execution model and the Sandbox protocol shared by every backend.

The model mirrors E2B's code interpreter (`logs`, `results`, `error`) so the
loop, the Reflector and the UI never care which backend ran the code, and a
local run and an E2B run of the same program compare equal (ignoring time).
"""

from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

LANGUAGES = ("python", "javascript", "bash")
OutputCallback = Callable[[str], None]


class SandboxUnavailable(RuntimeError):
    """No isolation is possible here and unisolated runs were not allowed."""


class Logs(BaseModel):
    stdout: list[str] = Field(default_factory=list)
    stderr: list[str] = Field(default_factory=list)


class Result(BaseModel):
    """One displayed value: a figure (png, base64) or the cell's main result."""

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    json_data: dict | None = Field(default=None, alias="json")
    is_main_result: bool = False

    model_config = {"populate_by_name": True}

    def formats(self) -> list[str]:
        names = ("text", "html", "markdown", "svg", "png", "jpeg", "json_data")
        return [n for n in names if getattr(self, n)]


class ExecutionError(BaseModel):
    name: str
    value: str
    traceback: str = ""


class Execution(BaseModel):
    logs: Logs = Field(default_factory=Logs)
    results: list[Result] = Field(default_factory=list)
    error: ExecutionError | None = None
    exit_code: int | None = None
    duration_ms: float = 0.0
    timed_out: bool = False
    truncated: bool = False

    @property
    def stdout(self) -> str:
        return "".join(self.logs.stdout)

    @property
    def stderr(self) -> str:
        return "".join(self.logs.stderr)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def comparable(self) -> dict:
        """Everything but the timing: what must match across backends."""
        return self.model_dump(exclude={"duration_ms"})


@runtime_checkable
class Sandbox(Protocol):
    """Runs untrusted code; `isolation` says honestly what protects the host."""

    isolation: str

    def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Execution: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Sandbox": ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
