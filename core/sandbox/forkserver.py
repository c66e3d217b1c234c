"""Host side of the fork server: a pool of long-lived bubblewrap sandboxes.

Each server is one bubblewrap sandbox with exactly the flags of a fresh run
(plus `--as-pid-1`), whose init is `inside/forkserver.py`: a Python process
with the launcher set up and common modules imported, that forks a fresh
child per run and puts the sandbox back as it was afterwards (see that file).
A run then costs a fork instead of a namespace set-up plus an interpreter
start-up: a few ms instead of tens.

Rules that keep this as safe as a fresh sandbox per run:
* One run at a time per server; a server is checked out of the pool for the
  whole run. The pool grows to the number of concurrent runs.
* A server is discarded (its whole sandbox SIGKILLed), never reused, after a
  timeout, a crash, a protocol error, or when it says it could not clean up.
* Servers are started from one long-lived thread: `--die-with-parent` uses
  PR_SET_PDEATHSIG, which fires when the *thread* that started bubblewrap
  ends, so a server started from a short-lived worker thread would die under
  another thread's run.
* Servers die with this process (`--die-with-parent`), are shut down at
  interpreter exit, and are shut down after IDLE_SECONDS unused.
"""

import atexit
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from core.interrupts import is_interrupted
from core.sandbox import isolation as iso
from core.sandbox.process import DRAIN_AFTER_KILL, GRACE_AFTER_EXIT, Captured, Reader, kill_group

CANCEL_SLICE_S = 0.1  # how long a read may block before a cancel is looked at

log = logging.getLogger(__name__)
START_TIMEOUT = 30.0  # seconds for a new server to say it is ready (a loaded machine is slow)
IDLE_SECONDS = 60.0  # an idle server is shut down after this long
MAX_IDLE = 32  # servers kept per pool; more concurrent runs start (and later drop) extra ones
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class ServerDied(RuntimeError):
    """The server went away before it started the program: safe to retry elsewhere."""


# -- one long-lived thread starts every server (see PR_SET_PDEATHSIG above) ------------------------

_spawn_queue: "queue.Queue[tuple[Callable[[], object], Future]]" = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        try:
            job = _spawn_queue.get(timeout=IDLE_SECONDS / 4)
        except queue.Empty:
            job = None
        if job is not None:
            fn, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
        try:
            reap_idle()
        except Exception:  # noqa: BLE001 - this thread must live: servers die with it
            log.exception("reaping idle sandbox servers")


def on_spawner_thread(fn: Callable[[], object]) -> object:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="ace-sandbox-spawner", daemon=True)
            _spawner.start()
    fut: Future = Future()
    _spawn_queue.put((fn, fut))
    return fut.result()


# -- one server ----------------------------------------------------------------------------------


class ForkServer:
    """One sandbox with a fork server as its init; not thread-safe (the pool hands it to one run)."""

    def __init__(self, bwrap: str, disk_mb: int) -> None:
        self.disk_mb = disk_mb
        self.uid = iso.take_uid()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.last_used = time.monotonic()
        self.runs = 0
        self._errlog = tempfile.TemporaryFile()
        try:
            self._start(bwrap)
        except BaseException:
            self.kill()
            raise

    def _start(self, bwrap: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        try:
            spec = iso.SandboxSpec(disk_mb=self.disk_mb, as_pid_1=True)
            command = [iso.sandbox_python()[1], "-I", "-S", f"{iso.SANDBOX_ACE}/forkserver.py", str(theirs.fileno())]
            argv, user = iso.launch_argv(bwrap, spec, command, self.uid)

            def spawn() -> subprocess.Popen:
                return subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errlog,
                    pass_fds=(theirs.fileno(),), env=BWRAP_ENV, start_new_session=True, **user,
                )

            self.proc = on_spawner_thread(spawn)  # type: ignore[assignment]
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            msg = ours.recv(65536)
        except OSError as exc:
            raise RuntimeError(f"sandbox fork server did not start: {exc}; {self.stderr()}") from None
        if not msg or "ready" not in json.loads(msg):
            raise RuntimeError(f"sandbox fork server did not start: {self.stderr()}")
        ours.setblocking(False)

    def stderr(self) -> str:
        try:
            self._errlog.seek(0)
            return self._errlog.read(4000).decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.sock is not None

    def kill(self) -> None:
        """SIGKILL the whole sandbox (bubblewrap, then its PID namespace with it) and wait."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait()
            self.proc = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        iso.give_uid(self.uid)
        self.uid = None
        self._errlog.close()

    def run(
        self, code: str, path: str, limits: str, *, timeout: float, max_output: int, max_channel: int = 32 << 20,
        on_stdout: Callable[[str], None] | None = None, on_stderr: Callable[[str], None] | None = None,
    ) -> tuple[Captured, bool]:
        """Run Python `code` at `path`: (captured, healthy). Raises ServerDied if nothing ran."""
        assert self.sock is not None
        out = Captured()
        start = time.monotonic()
        deadline = start + timeout
        self.last_used = start
        self.runs += 1
        code_fd = os.memfd_create("ace-code")
        pipes = [os.pipe() for _ in range(3)]
        try:
            os.write(code_fd, code.encode())
            os.lseek(code_fd, 0, os.SEEK_SET)
            header = json.dumps({"limits": limits, "path": path}).encode()
            try:
                socket.send_fds(self.sock, [header], [code_fd] + [w for _, w in pipes])
            except OSError as exc:
                for r, _ in pipes:
                    os.close(r)
                raise ServerDied(f"send: {exc}") from None
        finally:
            os.close(code_fd)
            for _, w in pipes:
                os.close(w)
        (out_r, _), (err_r, _), (res_r, _) = pipes
        reader = Reader(out, out_r, err_r, res_r, max_output, max_channel, on_stdout, on_stderr)
        state: dict = {"started": False, "exit": None, "fatal": None, "eof": False, "bad": False}
        sock = self.sock

        def on_control() -> None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                state["eof"] = True
                reader.unwatch(sock.fileno())
                return
            try:
                msg = json.loads(data)
            except ValueError:
                state["bad"] = True
                return
            if "started" in msg:
                state["started"] = True
            if "exit" in msg:
                state["exit"], state["fatal"] = msg["exit"], msg.get("fatal")

        reader.watch(sock.fileno(), on_control)
        exited_at: float | None = None
        healthy = False
        try:
            while True:
                now = time.monotonic()
                if state["eof"] or state["bad"]:
                    break
                if state["exit"] is not None:
                    exited_at = exited_at or now
                    if not reader.open_pipes or now - exited_at > GRACE_AFTER_EXIT:
                        break  # every process but the server is dead: the pipes are at EOF
                elif now >= deadline:
                    out.timed_out = True
                    break
                elif is_interrupted():  # cancelled: not healthy, so the server (and the program) is killed
                    break
                reader.pump(min(deadline - now, CANCEL_SLICE_S) if exited_at is None else GRACE_AFTER_EXIT)
            healthy = state["exit"] is not None and not state["fatal"] and not out.timed_out and not state["bad"]
        finally:
            died = "" if healthy else self.stderr()
            if not healthy:
                self.kill()
            reader.drain(DRAIN_AFTER_KILL if not healthy else 0.0)
            reader.finish()
            for fd in (out_r, err_r, res_r):
                os.close(fd)
        if not state["started"] and not out.timed_out and not (out.stdout or out.stderr or out.channel):
            raise ServerDied(died or "the fork server died")
        if state["exit"] is not None:
            code_ = int(state["exit"])
            out.exit_code = 128 - code_ if code_ < 0 else code_  # killed by a signal: like bwrap, 128 + signal
        elif out.timed_out:
            out.exit_code = -signal.SIGKILL
        else:  # the server (so the whole sandbox) died under the program: report it as killed
            out.exit_code = 128 + signal.SIGKILL
            out.stderr.append("sandbox error: the sandbox died during the run\n")
        out.duration_ms = (time.monotonic() - start) * 1000
        return out, healthy


# -- the pool -----------------------------------------------------------------------------------


class ServerPool:
    """Idle servers for one sandbox configuration; thread-safe."""

    def __init__(self, bwrap: str, disk_mb: int) -> None:
        self.bwrap, self.disk_mb = bwrap, disk_mb
        self.idle: list[ForkServer] = []
        self.lock = threading.Lock()
        self.closed = False

    def acquire(self) -> ForkServer:
        with self.lock:
            while self.idle:
                server = self.idle.pop()
                if server.alive():
                    return server
                server.kill()
        return ForkServer(self.bwrap, self.disk_mb)

    def release(self, server: ForkServer, healthy: bool) -> None:
        if healthy and server.alive():
            with self.lock:
                if not self.closed and len(self.idle) < MAX_IDLE:
                    server.last_used = time.monotonic()
                    self.idle.append(server)
                    return
        server.kill()

    def reap_idle(self, max_idle_s: float) -> None:
        now = time.monotonic()
        with self.lock:
            old = [s for s in self.idle if now - s.last_used > max_idle_s]
            self.idle = [s for s in self.idle if s not in old]
        for server in old:
            server.kill()

    def shutdown(self, final: bool = False) -> None:
        with self.lock:
            self.closed = self.closed or final
            servers, self.idle = self.idle, []
        for server in servers:
            server.kill()

    def run(self, code: str, path: str, limits: str, **kwargs) -> Captured:
        """Run on an idle server (or a new one); retried once on a fresh server if nothing ran."""
        for attempt in range(2):
            server = self.acquire()
            try:
                out, healthy = server.run(code, path, limits, **kwargs)
            except ServerDied:
                server.kill()
                if attempt or is_interrupted():  # a cancelled run is not tried again
                    raise
                continue
            except BaseException:
                server.kill()
                raise
            self.release(server, healthy)
            return out
        raise AssertionError("unreachable")


_pools: dict[tuple[str, int], ServerPool] = {}
_pools_lock = threading.Lock()


def pool_for(bwrap: str, disk_mb: int) -> ServerPool:
    with _pools_lock:
        key = (bwrap, disk_mb)
        if key not in _pools:
            _pools[key] = ServerPool(bwrap, disk_mb)
        return _pools[key]


def reap_idle(max_idle_s: float = IDLE_SECONDS) -> None:
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.reap_idle(max_idle_s)


def shutdown_all(final: bool = False) -> None:
    """Kill every idle server (running ones are killed when their run returns them).

    `final` (at interpreter exit): servers returned later are killed, not kept.
    """
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.shutdown(final)


def server_pids() -> set[int]:
    """Host pids of idle servers' bubblewrap processes (for tests)."""
    with _pools_lock:
        pools = list(_pools.values())
    pids = set()
    for pool in pools:
        with pool.lock:
            pids |= {s.proc.pid for s in pool.idle if s.proc is not None}
    return pids


def _after_fork_in_child() -> None:
    """A forked copy of this process must not talk to its parent's servers: forget them."""
    global _spawner, _spawn_queue, _pools_lock, _spawner_lock
    for pool in _pools.values():
        for server in pool.idle:
            if server.sock is not None:
                server.sock.close()
    _pools.clear()
    _pools_lock, _spawner_lock = threading.Lock(), threading.Lock()
    _spawner, _spawn_queue = None, queue.Queue()


atexit.register(shutdown_all, True)
os.register_at_fork(after_in_child=_after_fork_in_child)
