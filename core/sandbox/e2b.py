"""E2B backend through the real `e2b-code-interpreter` SDK.

One cloud sandbox per E2bSandbox object, created lazily, reused across runs
(the attempts of one episode) and killed on close() and on every error path.
"""

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from core import interrupts
from core.config import Settings, get_settings
from core.interrupts import Interrupted
from core.sandbox.base import Execution, ExecutionError, Logs, OutputCallback, Result, SandboxUnavailable
from core.sandbox.local import normalize_language


class E2bSandbox:
    isolation = "e2b cloud"

    def __init__(self, settings: Settings | None = None, *, debug: bool = False, **create_opts: Any) -> None:
        self.settings = settings or get_settings()
        self.debug = debug
        self.create_opts = create_opts
        self._sbx: Any = None
        if debug:
            self.isolation = "e2b (debug server on localhost:49999)"
        elif not self.settings.e2b_api_key:
            raise SandboxUnavailable("ACE_SANDBOX=e2b needs E2B_API_KEY to be set")

    def _sandbox(self) -> Any:
        if self._sbx is None:
            from e2b_code_interpreter import Sandbox as SdkSandbox

            key = self.settings.secret("e2b_api_key") or ("debug" if self.debug else None)
            self._sbx = SdkSandbox.create(api_key=key, debug=self.debug, **self.create_opts)
        return self._sbx

    def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Execution:
        """Run in the shared E2B sandbox; a lost or failing sandbox is killed, never leaked."""
        lang = normalize_language(language)
        timeout = float(timeout if timeout is not None else self.settings.sandbox_timeout)
        start = time.monotonic()
        sbx = self._sandbox()
        try:
            sdk_exec = self._run_interruptible(lambda: sbx.run_code(
                code, language=lang, timeout=timeout,
                on_stdout=(lambda m: on_stdout(m.line)) if on_stdout else None,
                on_stderr=(lambda m: on_stderr(m.line)) if on_stderr else None,
            ), timeout + 30)
        except Interrupted:
            self.close()  # the program dies with its sandbox; the next run gets a new one
            raise
        except Exception as exc:
            from e2b import TimeoutException

            self.close()
            if isinstance(exc, TimeoutException):
                return Execution(
                    error=ExecutionError(name="TimeoutError", value=f"execution exceeded {timeout:g} s"),
                    timed_out=True, duration_ms=(time.monotonic() - start) * 1000,
                )
            raise
        return from_sdk(sdk_exec, (time.monotonic() - start) * 1000)

    def _run_interruptible(self, call: Callable[[], Any], wait_s: float) -> Any:
        """The SDK's blocking call, in its own thread when a cancel may come: the caller stops waiting
        (and kills the sandbox) at once instead of when the program ends."""
        if interrupts.current() is None:
            return call()
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        ready = threading.Event()
        done.add_done_callback(lambda _f: ready.set())
        threading.Thread(target=run, name="e2b-run", daemon=True).start()
        if not interrupts.wait_until(ready, wait_s):  # the SDK's own timeout should have ended it long ago
            from e2b import TimeoutException

            raise TimeoutException(f"the sandbox did not answer within {wait_s:g} s")
        return done.result()

    def close(self) -> None:
        sbx, self._sbx = self._sbx, None
        if sbx is not None:
            try:
                sbx.kill()
            except Exception:  # noqa: BLE001 - best effort: it times out in the cloud anyway
                pass

    def __enter__(self) -> "E2bSandbox":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def from_sdk(sdk: Any, duration_ms: float) -> Execution:
    """Map the SDK's Execution to ours (E2B has no exit code: 1 on error, like Python)."""
    results: list[Result] = []
    for r in sdk.results:
        results.append(Result(text=r.text, html=r.html, markdown=r.markdown, svg=r.svg, png=r.png,
                              jpeg=r.jpeg, json=r.json, is_main_result=r.is_main_result))
    error = None
    if sdk.error is not None:
        error = ExecutionError(name=sdk.error.name, value=sdk.error.value, traceback=sdk.error.traceback)
    return Execution(
        logs=Logs(stdout=list(sdk.logs.stdout), stderr=list(sdk.logs.stderr)), results=results, error=error,
        exit_code=1 if error else 0, duration_ms=duration_ms,
    )
