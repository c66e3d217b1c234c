"""The local sandbox: one fresh bubblewrap-isolated process per run.

Python runs, by default, go through a fork server instead (see forkserver.py):
a pool of long-lived sandboxes with the same isolation, each forking a fresh
child per run and wiping itself after it, which cuts a run from tens of ms to
a few. `LocalSandbox(reuse=False)` or ACE_SANDBOX_FORKSERVER=0 turns that off;
JavaScript and bash always get a fresh sandbox.

Layout inside the sandbox: read-only /usr (and a few /etc files), the Python
interpreter's prefix at /opt/python, the project's site-packages at
/opt/site-packages (so matplotlib and numpy import; nothing else of the
project, its data or its database), the launcher at /opt/ace, and two sized
tmpfs: /home/user (the work directory and cwd, like E2B) and /tmp. Nothing
the program writes reaches the host's disk. No network, no capabilities, a
clean environment, its own PID namespace. As root, bubblewrap itself is
started as an unprivileged host uid, so RLIMIT_NPROC really binds; folders
that uid cannot enter (a project under /root) are reached through a private
mount namespace (isolation.py, stage.py).
"""

import json
import logging
import math
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from types import TracebackType

from core import interrupts
from core.config import Settings, get_settings
from core.sandbox import isolation as iso
from core.sandbox.base import LANGUAGES, Execution, ExecutionError, Logs, OutputCallback, Result
from core.sandbox.process import Captured, run_captured

log = logging.getLogger(__name__)
INSIDE_DIR = Path(__file__).resolve().parent / "inside"
MAX_OUTPUT = 1 << 20  # bytes kept per stream
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # bubblewrap's own environ is readable inside
SUFFIX = {"python": ".py", "javascript": ".js", "bash": ".sh"}
ALIASES = {"py": "python", "js": "javascript", "node": "javascript", "sh": "bash", "shell": "bash"}


def normalize_language(language: str) -> str:
    lang = ALIASES.get(language.lower(), language.lower())
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")
    return lang


def forkserver_default(settings: Settings) -> bool:
    return settings.sandbox_forkserver


class LocalSandbox:
    """Fresh process per run; refuses to run unisolated unless allowed."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_output: int = MAX_OUTPUT,
        disk_mb: int = 64,
        nproc: int = 64,
        force_unisolated: bool = False,
        reuse: bool | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.max_output = max_output
        self.disk_mb = disk_mb
        self.nproc = nproc
        if force_unisolated:
            self._bwrap = None
        else:
            self._bwrap = iso.require_bwrap(self.settings.allow_unisolated)
        self.reuse = (forkserver_default(self.settings) if reuse is None else reuse) and self._bwrap is not None
        if self._bwrap is None:
            self.isolation = "NONE - unisolated (ACE_ALLOW_UNISOLATED=1)"
        else:
            who = f"uid {iso.SANDBOX_UID}" + (" on an unprivileged host uid" if os.geteuid() == 0 else "")
            how = "python via a fork server, fresh process per run" if self.reuse else "fresh process per run"
            self.isolation = f"bubblewrap ({who}, no network, read-only system, {disk_mb} MB tmpfs; {how})"

    # context manager and close: nothing persists between runs. Fork servers are shared by every
    # LocalSandbox of this process (an episode's sandbox is short-lived, a server start is not free);
    # idle ones stop after forkserver.IDLE_SECONDS, all stop at exit or with forkserver.shutdown_all().
    def close(self) -> None:
        return None

    def __enter__(self) -> "LocalSandbox":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def limits(self, language: str, timeout: float) -> dict[str, int]:
        mem = self.settings.sandbox_memory_mb << 20
        limits = {
            "cpu": math.ceil(timeout) + 1,
            "fsize": self.disk_mb << 20,
            "nproc": self.nproc,
            "nofile": 256,
            "core": 0,
        }
        if language == "javascript":  # V8 reserves far more address space than it uses
            limits |= {"data": mem, "as": mem + (8 << 30)}
        else:
            limits |= {"as": mem}
        return limits

    def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Execution:
        """Run `code` in a fresh sandbox; never raises for anything the code does."""
        lang = normalize_language(language)
        timeout = float(timeout if timeout is not None else self.settings.sandbox_timeout)
        if lang == "python" and "matplotlib" in code and self._bwrap is not None:
            font_cache(self)
        limits = self.limits(lang, timeout)
        bwrap = self._bwrap
        if bwrap is None:
            captured = self._run_unisolated(code, lang, limits, timeout, on_stdout, on_stderr)
        elif lang == "python" and self.reuse:
            captured = self._run_forked(bwrap, code, limits, timeout, on_stdout, on_stderr)
        else:
            captured = self._run_isolated(bwrap, code, lang, limits, timeout, on_stdout, on_stderr)
        interrupts.check()  # cancelled mid-run: the program was killed; the run has no result to report
        return to_execution(captured, lang, timeout)

    def _run_forked(self, bwrap: str, code: str, limits: dict[str, int], timeout: float,
                    on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> Captured:
        from core.sandbox import forkserver

        pool = forkserver.pool_for(bwrap, self.disk_mb)
        spec = ",".join(f"{k}={v}" for k, v in limits.items())
        try:
            return pool.run(code, "/home/user/main.py", spec, timeout=timeout, max_output=self.max_output,
                            on_stdout=on_stdout, on_stderr=on_stderr)
        except (forkserver.ServerDied, RuntimeError, OSError) as exc:  # no server: a fresh sandbox still works
            interrupts.check()  # ... unless the server was killed because the run was cancelled
            log.warning("sandbox fork server unavailable (%s); running in a fresh sandbox", exc)
            return self._run_isolated(bwrap, code, "python", limits, timeout, on_stdout, on_stderr)

    def _run_isolated(self, bwrap: str, code: str, lang: str, limits: dict[str, int], timeout: float,
                      on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> Captured:
        read_fd, write_fd = os.pipe()
        code_fd = os.memfd_create("ace-code")
        os.write(code_fd, code.encode())
        os.lseek(code_fd, 0, os.SEEK_SET)
        path = "/home/user/main" + SUFFIX[lang]
        spec = iso.SandboxSpec(disk_mb=self.disk_mb, code_fd=code_fd, code_path=path)
        with iso.uid_slot() as host_uid:
            command = launcher_argv(iso.sandbox_python()[1], iso.SANDBOX_ACE, limits, lang, path, write_fd)
            argv, user = iso.launch_argv(bwrap, spec, command, host_uid)
            try:
                return run_captured(
                    argv, timeout=timeout, max_output=self.max_output,
                    channel_fd=read_fd, channel_write_fd=write_fd, on_stdout=on_stdout, on_stderr=on_stderr,
                    pass_fds=(write_fd, code_fd), env=BWRAP_ENV, **user,
                )
            finally:
                os.close(code_fd)

    def _run_unisolated(self, code: str, lang: str, limits: dict[str, int], timeout: float,
                        on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> Captured:
        import tempfile

        read_fd, write_fd = os.pipe()
        workdir = tempfile.mkdtemp(prefix="ace-unisolated-")
        try:
            path = os.path.join(workdir, "main" + SUFFIX[lang])
            Path(path).write_text(code)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
                "MPLBACKEND": "module://ace_mpl_backend", "MPLCONFIGDIR": os.path.join(workdir, ".mpl"),
                "ACE_SITE_PACKAGES": sysconfig.get_paths()["purelib"], "ACE_NODE": iso.node_path(),
            }
            python = os.path.realpath(sys.executable)
            argv = launcher_argv(python, str(INSIDE_DIR), limits, lang, path, write_fd)
            return run_captured(
                argv, timeout=timeout, max_output=self.max_output, channel_fd=read_fd,
                channel_write_fd=write_fd, on_stdout=on_stdout, on_stderr=on_stderr,
                pass_fds=(write_fd,), env=env, cwd=workdir,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def launcher_argv(python: str, ace_dir: str, limits: dict[str, int], lang: str, path: str, fd: int) -> list[str]:
    spec = ",".join(f"{k}={v}" for k, v in limits.items())
    return [python, "-I", "-S", f"{ace_dir}/launcher.py", spec, lang, path, str(fd)]


def to_execution(cap: Captured, lang: str, timeout: float) -> Execution:
    """Turn raw capture + result channel into an E2B-shaped Execution."""
    results: list[Result] = []
    error: ExecutionError | None = None
    for line in cap.channel.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        kind = record.pop("type", None)
        if kind == "result":
            results.append(Result(png=record.get("png"), text=record.get("text")))
        elif kind == "error" and error is None:
            error = ExecutionError(name=str(record.get("name")), value=str(record.get("value")),
                                   traceback=str(record.get("traceback", "")))
    if cap.timed_out:
        error = ExecutionError(name="TimeoutError", value=f"execution exceeded {timeout:g} s", traceback="")
    elif error is None and cap.exit_code:
        error = exit_error(cap, lang)
    return Execution(
        logs=Logs(stdout=cap.stdout, stderr=cap.stderr), results=results, error=error,
        exit_code=cap.exit_code, duration_ms=cap.duration_ms, timed_out=cap.timed_out, truncated=cap.truncated,
    )


def exit_error(cap: Captured, lang: str) -> ExecutionError:
    """An error for a nonzero exit without a Python exception (node, bash, signals)."""
    code = cap.exit_code or 0
    tail = "".join(cap.stderr)[-4000:]
    if code < 0 or code > 128:
        import signal

        num = -code if code < 0 else code - 128
        name = signal.Signals(num).name if num in signal.Signals._value2member_map_ else str(num)
        if name == "SIGXCPU":
            return ExecutionError(name="TimeoutError", value="CPU time limit exceeded", traceback=tail)
        return ExecutionError(name="KilledError", value=f"killed by {name}", traceback=tail)
    if lang == "javascript":
        for line in reversed(tail.splitlines()):
            head, sep, rest = line.partition(": ")
            if sep and head.isidentifier() and head.endswith("Error"):
                return ExecutionError(name=head, value=rest, traceback=tail)
    return ExecutionError(name="ExitCodeError", value=f"exit code {code}", traceback=tail)


_font_lock = threading.RLock()
_font_done = False


def font_cache(sandbox: LocalSandbox) -> None:
    """Build matplotlib's font list once, inside the sandbox, and keep it on the host."""
    global _font_done
    with _font_lock:
        if _font_done:
            return
        _font_done = True
        target = iso.cache_dir()
        if any(target.glob("fontlist-*.json")):
            return
        probe = (
            "import matplotlib.font_manager as fm, os, sys\n"
            "name = f'fontlist-v{fm.FontManager.__version__}.json'\n"
            "fm.json_dump(fm.fontManager, '/tmp/f.json')\n"
            "sys.stdout.write(name + '\\n' + open('/tmp/f.json').read())\n"
        )
        quiet = LocalSandbox(sandbox.settings, max_output=16 << 20)
        ex = quiet.run(probe, "python", timeout=60)
        if ex.ok and not ex.truncated and ex.logs.stdout:
            name, body = ex.logs.stdout[0].strip(), "".join(ex.logs.stdout[1:])
            tmp = target / (name + f".{os.getpid()}")
            tmp.write_text(body)
            tmp.replace(target / name)
