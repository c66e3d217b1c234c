"""Run a child process with a wall-clock deadline and capped output.

Never `communicate()`: a grandchild that keeps a pipe open would hang it, and
a program printing 100 MB would cost the host 100 MB. Here every stream is
read through one selector against a deadline, kept up to a cap and drained
(discarded) beyond it, and the whole process group is killed at the deadline.
"""

import codecs
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.interrupts import is_interrupted

GRACE_AFTER_EXIT = 0.5  # seconds to wait for pipes to close after exit
DRAIN_AFTER_KILL = 2.0  # after the kill, EOF on every pipe means every writer is dead


@dataclass
class Captured:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    channel: bytes = b""
    exit_code: int | None = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: float = 0.0


MARKER_ROOM = 100  # bytes kept free under the cap for the line that marks the cut


class _Stream:
    """Splits decoded output into lines, calls back per line, enforces a cap.

    Past the cap it keeps the output's tail (a quarter of the cap) instead of nothing: how a program
    stopped is at the end of what it printed. A line marks how much was cut between head and tail."""

    def __init__(self, sink: list[str], cap: int, callback: Callable[[str], None] | None):
        self.sink, self.callback = sink, callback
        self.tail_cap = cap // 4
        self.cap = max(0, cap - self.tail_cap - MARKER_ROOM)  # the head's share
        self.kept = 0
        self.truncated = False
        self.partial = ""
        self.tail = bytearray()
        self.dropped = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        if self.truncated:
            self._keep_tail(data)
            return
        room = self.cap - self.kept
        if len(data) > room:
            data, rest, self.truncated = data[:room], data[room:], True
            self._keep_tail(rest)
        self.kept += len(data)
        self._emit(self.partial + self.decoder.decode(data))

    def _keep_tail(self, data: bytes) -> None:
        self.tail += data
        if len(self.tail) > self.tail_cap:
            over = len(self.tail) - self.tail_cap
            self.dropped += over
            del self.tail[:over]

    def _emit(self, text: str) -> None:
        lines = text.splitlines(keepends=True)
        self.partial = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        self.sink.append(line)
        if self.callback is not None:
            self.callback(line)

    def close(self) -> None:
        rest = self.partial + self.decoder.decode(b"", final=True)
        self.partial = ""
        if rest:
            self._line(rest if rest.endswith("\n") or not self.truncated else rest + "\n")
        if not self.truncated:
            return
        tail = bytes(self.tail)
        start = tail.find(b"\n") + 1 if self.dropped else 0  # begin the tail at a line, when one was cut
        if 0 < start < len(tail):
            self.dropped, tail = self.dropped + start, tail[start:]
        cut = self.dropped
        self._line(f"[… {cut / 1024:,.0f} KB of output cut here; its end follows …]\n" if cut >= 1024
                   else f"[… {cut:,} bytes of output cut here; its end follows …]\n")
        for line in tail.decode("utf-8", errors="replace").splitlines(keepends=True):
            self._line(line)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a sandbox: bubblewrap's child first, then bubblewrap's process group.

    Bubblewrap's child is the init of the sandbox's PID namespace: its death
    kills every process in the namespace, and bubblewrap, still alive, reaps
    it. (Killing bubblewrap first also kills the namespace, through the
    parent-death signal, but leaves its init to be reaped by the host's init,
    which can take a while.)
    """
    if proc.returncode is None:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
                children = [int(pid) for pid in fh.read().split()]
        except (OSError, ValueError):
            children = []
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if children:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


class Reader:
    """Reads stdout, stderr and an optional result pipe through one selector, with caps."""

    def __init__(self, out: Captured, stdout_fd: int, stderr_fd: int, channel_fd: int | None, max_output: int,
                 max_channel: int, on_stdout: Callable[[str], None] | None,
                 on_stderr: Callable[[str], None] | None) -> None:
        self.out, self.channel_fd, self.max_channel = out, channel_fd, max_channel
        self.streams = {
            stdout_fd: _Stream(out.stdout, max_output, on_stdout),
            stderr_fd: _Stream(out.stderr, max_output, on_stderr),
        }
        self.channel = bytearray()
        self.sel = selectors.DefaultSelector()
        for fd in self.streams:
            self.sel.register(fd, selectors.EVENT_READ)
        if channel_fd is not None:
            self.sel.register(channel_fd, selectors.EVENT_READ)
        self.extra: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Also call `on_ready()` whenever `fd` is readable (it unregisters itself)."""
        self.extra[fd] = on_ready
        self.sel.register(fd, selectors.EVENT_READ)

    def unwatch(self, fd: int) -> None:
        self.extra.pop(fd, None)
        if fd in self.sel.get_map():
            self.sel.unregister(fd)

    @property
    def open_pipes(self) -> int:
        return sum(1 for fd in self.sel.get_map() if fd not in self.extra)

    def pump(self, wait: float) -> None:
        for key, _ in self.sel.select(wait):
            if key.fd in self.extra:
                self.extra[key.fd]()
                continue
            data = os.read(key.fd, 65536)
            if not data:
                self.sel.unregister(key.fd)
            elif key.fd == self.channel_fd:
                if len(self.channel) < self.max_channel:
                    self.channel += data
                else:
                    self.out.truncated = True
            else:
                self.streams[key.fd].feed(data)

    def drain(self, seconds: float) -> None:
        """After every writer was killed: read what is left until EOF (bounded in time)."""
        for fd in list(self.extra):
            self.unwatch(fd)
        until = time.monotonic() + seconds
        while self.open_pipes and time.monotonic() < until:
            self.pump(0.05)

    def finish(self) -> None:
        """Close the selector and flush partial lines; the fds are the caller's to close."""
        self.sel.close()
        for stream in self.streams.values():
            stream.close()
            self.out.truncated = self.out.truncated or stream.truncated
        self.out.channel = bytes(self.channel)


def run_captured(
    argv: list[str],
    *,
    timeout: float,
    max_output: int,
    channel_fd: int | None = None,
    channel_write_fd: int | None = None,
    max_channel: int = 32 << 20,
    on_stdout: Callable[[str], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
    **popen: Any,
) -> Captured:
    """Start `argv`, collect stdout/stderr (and an optional result pipe) until exit or deadline.

    `channel_fd` is the read end of an extra pipe whose write end
    (`channel_write_fd`, passed in `pass_fds`) the child inherits; both are closed here.
    """
    out = Captured()
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, **popen,
    )
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes
    stdout, stderr = proc.stdout, proc.stderr
    if channel_write_fd is not None:
        os.close(channel_write_fd)
    reader = Reader(out, stdout.fileno(), stderr.fileno(), channel_fd,
                    max_output, max_channel, on_stdout, on_stderr)
    exited_at: float | None = None
    try:
        while reader.open_pipes:
            now = time.monotonic()
            if is_interrupted():  # cancelled: the whole group is killed below
                break
            if now >= deadline:
                out.timed_out = proc.poll() is None
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > GRACE_AFTER_EXIT:
                break
            reader.pump(min(deadline - now, 0.05 if exited_at is None else GRACE_AFTER_EXIT))
        while not out.timed_out and exited_at is None and proc.poll() is None and not is_interrupted():
            if time.monotonic() >= deadline:  # every pipe closed but the program still runs
                out.timed_out = True
                break
            time.sleep(0.02)
    finally:
        kill_group(proc)
        reader.drain(DRAIN_AFTER_KILL)
        reader.finish()
        proc.wait()
        stdout.close()
        stderr.close()
        if channel_fd is not None:
            os.close(channel_fd)
    out.exit_code = proc.returncode
    out.duration_ms = (time.monotonic() - start) * 1000
    return out
