"""Fork server: runs inside one bubblewrap sandbox as its PID 1 (stdlib only).

Usage: python -I -S forkserver.py CONTROL_FD

Python starts once, with the launcher's set-up done and common modules
imported; each run is then a fresh `fork()` of this pristine process, so it
pays neither interpreter start-up nor bubblewrap's namespace set-up. The
sandbox itself is the same as a fresh run's (same bwrap flags); this process
only adds what a fresh sandbox would give each run for free:

* Per run the host sends, over CONTROL_FD (a SOCK_SEQPACKET socket), a JSON
  header and four fds: the program (a memfd), and the write ends of fresh
  stdout, stderr and result pipes. The child sets its rlimits, starts a new
  session, drops every other fd and runs the program as the launcher would.
* As PID 1 this process cannot be signalled by the code (the kernel drops
  signals to a namespace's init from inside it), reaps every orphan, and
  after the run SIGKILLs every other process in the namespace (a `setsid`
  grandchild does not survive into the next run) before it reports.
* Then it empties /home/user, /tmp and /dev/shm and checks that the run left
  nothing else behind (System V IPC, POSIX message queues, keys). If anything
  cannot be put back exactly as it was, it says so and exits, and the host
  starts a new sandbox: one run can never observe or influence the next.
* It is not dumpable, so code running as the same uid can neither ptrace it
  nor read its memory.
"""

import gc
import json
import os
import resource
import signal
import socket
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import launcher  # noqa: E402

WORK = "/home/user"
WIPE = (WORK, "/tmp", "/dev/shm")
PRELOAD = (
    "abc", "array", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal", "enum",
    "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "operator",
    "random", "re", "statistics", "string", "struct", "textwrap", "time", "traceback", "typing",
)
PR_SET_DUMPABLE = 4


_libc = None


def set_dumpable(on: bool) -> None:
    """prctl(PR_SET_DUMPABLE): the server is not dumpable, the program is (as in a fresh run)."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


RLIMITS = [getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")]
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)


def process_settings() -> tuple:
    """What a process of the same uid can change about this one from outside it
    (prlimit, setpriority, sched_setaffinity, sched_setscheduler, ioprio_set) and
    what a fork would pass on to the next run."""
    ioprio = _libc.syscall(IOPRIO_GET, 1, 0) if IOPRIO_GET and _libc is not None else None
    return (
        [resource.getrlimit(r) for r in RLIMITS], os.getpriority(os.PRIO_PROCESS, 0),
        sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0), ioprio,
    )


def snapshot() -> dict:
    """What a clean sandbox looks like: modes of the writable roots, /dev's entries, this process."""
    return {
        "modes": {path: os.stat(path).st_mode for path in WIPE},
        "dev": sorted(os.listdir("/dev")),
        "keys": _read("/proc/keys"),
        "self": process_settings(),
    }


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _rmtree_contents(root: str) -> None:
    """Delete everything under `root` (kept), whatever modes the run left."""
    for entry in os.scandir(root):
        path = entry.path
        if entry.is_dir(follow_symlinks=False):
            os.chmod(path, 0o700)
            _rmtree_contents(path)
            os.rmdir(path)
        else:
            os.unlink(path)


def ipc_is_empty() -> bool:
    for name in ("shm", "msg", "sem"):
        lines = _read(f"/proc/sysvipc/{name}").splitlines()
        if len(lines) > 1:
            return False
    try:
        return not os.listdir("/dev/mqueue")
    except FileNotFoundError:
        return True


def clean(base: dict) -> str | None:
    """Put the sandbox back as it was; the reason it cannot be, or None."""
    for path in WIPE:
        try:
            if stat.S_IMODE(os.stat(path).st_mode) != stat.S_IMODE(base["modes"][path]):
                os.chmod(path, base["modes"][path])
            _rmtree_contents(path)
        except OSError as exc:
            return f"cannot clean {path}: {exc}"
    if sorted(os.listdir("/dev")) != base["dev"]:
        return "/dev changed"
    if not ipc_is_empty():
        return "System V IPC or POSIX message queues left behind"
    if _read("/proc/keys") != base["keys"]:
        return "keys left behind"
    if process_settings() != base["self"]:
        return "the server's limits or scheduling were changed"
    return None


def kill_others() -> None:
    """SIGKILL every process in this PID namespace but this one, and reap them all."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def child(req: dict, fds: list[int], ctl: socket.socket) -> None:
    """In the forked child: become the program (never returns)."""
    status = 1
    try:
        ctl.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code_fd, out_w, err_w, res_w = fds
        os.setsid()
        set_dumpable(True)
        launcher.set_limits(req["limits"])
        with os.fdopen(code_fd, "rb") as fh:
            code = fh.read()
        path = req["path"]
        with open(path, "wb") as fh:
            fh.write(code)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, 3)
        os.closerange(4, 1 << 16)
        os.environ["ACE_RESULT_FD"] = "3"
        launcher.install_matplotlib_hook()
        status = launcher.run_python(path)
        try:
            if "threading" in sys.modules:  # what interpreter exit would do: join threads, run atexit
                sys.modules["threading"]._shutdown()
            import atexit

            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - never fall back into the server loop
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


def send(ctl: socket.socket, record: dict) -> None:
    ctl.send(json.dumps(record).encode())


def serve(ctl: socket.socket) -> None:
    base = snapshot()
    send(ctl, {"ready": os.getpid()})
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 8)
        except (ConnectionError, OSError):
            return
        if not msg:
            return  # the host closed the socket: shut down
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            send(ctl, {"fatal": "bad request"})
            return
        req = json.loads(msg)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req, fds, ctl)
        for fd in fds:
            os.close(fd)
        send(ctl, {"started": pid})
        while True:  # reap orphans as they come, until the program itself ends
            done, status = os.waitpid(-1, 0)
            if done == pid:
                break
        kill_others()
        if os.WIFSIGNALED(status):
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
        problem = clean(base)
        send(ctl, {"exit": code, "fatal": problem})
        if problem:
            return


def main() -> None:
    ctl = socket.socket(fileno=int(sys.argv[1]))
    ctl.set_inheritable(False)
    set_dumpable(False)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper at start-up
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    site = os.environ.get("ACE_SITE_PACKAGES")
    if site:
        sys.path.append(site)
    launcher.install_site_builtins()
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    os.chdir(WORK)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as PID 1 only handled signals arrive: handle none
    gc.collect()
    gc.freeze()  # the children's collections leave the server's objects (and their pages) alone
    serve(ctl)


if __name__ == "__main__":
    main()
