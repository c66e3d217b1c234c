"""Helpers for the service tests: real uvicorn servers on 127.0.0.1 (no tests here)."""

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import httpx
import uvicorn

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
_logs: dict[int, Any] = {}
SECRET_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY", "ACE_SERVICE_TOKEN", "ACE_MODEL")


def wait_up(base_url: str, timeout: float = 20.0, proc: Optional[subprocess.Popen] = None) -> None:
    def healthy() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{output(proc)[-3000:]}")
        try:
            return httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=timeout, message=f"{base_url} did not come up")


class ThreadServer:
    """uvicorn serving an app object from a thread of this process."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_up(self.base_url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_process(env: dict[str, str], port: Optional[int] = None) -> tuple[subprocess.Popen, str]:
    """`core.service.app.serve` in a child process (what `ace serve` runs), with a clean environment."""
    port = port or free_port()
    full = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    full.update(env)
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, "-c", f"from core.service.app import serve; serve('127.0.0.1', {port})"],
                            cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _logs[proc.pid] = log
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, proc=proc)
    except Exception:
        kill(proc)
        raise
    return proc, base


def output(proc: subprocess.Popen) -> str:
    """What the server printed so far (for failure messages)."""
    log = _logs.get(proc.pid)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log = _logs.pop(proc.pid, None)
    if log is not None:
        log.close()
