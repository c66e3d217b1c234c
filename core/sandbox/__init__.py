"""Sandboxes that run untrusted code: local (bubblewrap) by default, or E2B."""

from core.config import Settings, get_settings
from core.sandbox.base import (
    Execution,
    ExecutionError,
    Logs,
    Result,
    Sandbox,
    SandboxUnavailable,
)

__all__ = [
    "Execution", "ExecutionError", "Logs", "Result", "Sandbox", "SandboxUnavailable", "get_sandbox",
]


def get_sandbox(backend: str | None = None, settings: Settings | None = None) -> Sandbox:
    """A sandbox for `backend` ("local" | "e2b"); None means the configured one."""
    settings = settings or get_settings()
    name = (backend or settings.sandbox_backend).lower()
    if name == "local":
        from core.sandbox.local import LocalSandbox

        return LocalSandbox(settings)
    if name == "e2b":
        from core.sandbox.e2b import E2bSandbox

        return E2bSandbox(settings)
    raise ValueError(f"unknown sandbox backend {backend!r}; use 'local' or 'e2b'")
