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


class _Stream:
    """Splits decoded output into lines, calls back per line, enforces a cap."""

    def __init__(self, sink: list[str], cap: int, callback: Callable[[str], None] | None):
        self.sink, self.cap, self.callback = sink, cap, callback
        self.kept = 0
        self.truncated = False
        self.partial = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.cap - self.kept
        if len(data) > room:
            data, self.truncated = data[:room], True
        self.kept += len(data)
        self._emit(self.partial + self.decoder.decode(data))

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
            self._line(rest)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (bubblewrap then tears down its PID namespace)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


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
    **popen: object,
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
        start_new_session=True, **popen,  # type: ignore[arg-type]
    )
    if channel_write_fd is not None:
        os.close(channel_write_fd)
    streams = {
        proc.stdout.fileno(): _Stream(out.stdout, max_output, on_stdout),  # type: ignore[union-attr]
        proc.stderr.fileno(): _Stream(out.stderr, max_output, on_stderr),  # type: ignore[union-attr]
    }
    channel = bytearray()
    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    if channel_fd is not None:
        sel.register(channel_fd, selectors.EVENT_READ)
    exited_at: float | None = None

    def read_ready(wait: float) -> None:
        nonlocal channel
        for key, _ in sel.select(wait):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
            elif key.fd == channel_fd:
                if len(channel) < max_channel:
                    channel += data
                else:
                    out.truncated = True
            else:
                streams[key.fd].feed(data)

    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                out.timed_out = proc.poll() is None
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > GRACE_AFTER_EXIT:
                break
            read_ready(min(deadline - now, 0.05 if exited_at is None else GRACE_AFTER_EXIT))
        if not out.timed_out and exited_at is None:
            try:  # every pipe closed but the program still runs
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                out.timed_out = True
    finally:
        kill_group(proc)
        drain_until = time.monotonic() + DRAIN_AFTER_KILL
        while sel.get_map() and time.monotonic() < drain_until:
            read_ready(0.05)
        sel.close()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        if channel_fd is not None:
            os.close(channel_fd)
    for stream in streams.values():
        stream.close()
        out.truncated = out.truncated or stream.truncated
    out.channel = bytes(channel)
    out.exit_code = proc.returncode
    out.duration_ms = (time.monotonic() - start) * 1000
    return out
