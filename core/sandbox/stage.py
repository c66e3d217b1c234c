"""Started as root (stdlib only): make folders reachable to the sandbox's host uid, then exec bubblewrap.

Run as root, bubblewrap is started as an unprivileged host uid, which cannot
get to a project, venv or interpreter under a folder only root may enter
(/root, a `mktemp -d` folder): bubblewrap cannot even load its bundled libcap,
nor bind those folders. This script, started as root instead, puts itself in
a private mount namespace in which each such folder is bind-mounted at a
root-owned, world-traversable stage folder, switches to the sandbox's host
uid and gid (no supplementary groups, no capabilities) and execs bubblewrap,
which then finds everything at the stage: nothing is copied, nothing changes
on the host (the mounts exist only in that namespace, gone with the sandbox),
and the sandbox runs exactly as it would from an open folder.

The mount namespace is owned by a new user namespace that maps host root and
the sandbox uid to themselves, so this needs exactly what bubblewrap needs
(user namespaces), not CAP_SYS_ADMIN. Its maps can only be written from
outside it, hence the short-lived child: it creates the namespaces, this
process writes their maps, joins them and lets the child go.

Usage: python -I -S stage.py UID STAGE [NAME HOST_PATH]... -- BWRAP [ARG...]
Each HOST_PATH is bind-mounted at STAGE/NAME. Any failure exits 125 with one
line on stderr starting "ace-sandbox-stage:" that names the step and the cause.
Only cheap modules are imported: this runs before every sandbox it stages.
"""

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, SIGKILL = 1, 9
EXIT_STAGE = 125

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class StageError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise StageError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), what)


def _holder(to_parent: int, from_parent: int) -> None:
    """The child: create a user and a mount namespace, report, and wait to be let go."""
    _libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    try:
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
        os.write(to_parent, b"ok")
    except StageError as exc:
        os.write(to_parent, str(exc).encode(errors="replace"))
    os.read(from_parent, 1)  # returns at EOF: the parent has joined the namespaces (or died)
    os._exit(0)


def enter_namespaces(uid: int) -> None:
    """Join a new user namespace (host root and `uid` mapped to themselves) and a mount namespace it owns."""
    c_read, c_write = os.pipe()
    p_read, p_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(c_read)
        os.close(p_write)
        _holder(c_write, p_read)
    os.close(c_write)
    os.close(p_read)
    try:
        reply = os.read(c_read, 4096)
        if reply != b"ok":
            raise StageError(reply.decode(errors="replace") or "the namespace holder died")
        mapping = f"0 0 1\n{uid} {uid} 1\n" if uid else "0 0 1\n"
        for name in ("uid_map", "gid_map"):
            try:
                with open(f"/proc/{pid}/{name}", "w") as fh:
                    fh.write(mapping)
            except OSError as exc:
                raise StageError(f"writing {name}: {exc.strerror}") from None
        for kind, flag in (("user", CLONE_NEWUSER), ("mnt", CLONE_NEWNS)):
            fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
            try:
                _check(_libc.setns(fd, flag), f"joining the {kind} namespace")
            finally:
                os.close(fd)
    finally:
        os.close(p_write)
        os.close(c_read)
        os.waitpid(pid, 0)


def stage(folder: str, binds: list[tuple[str, str]]) -> None:
    """A private tmpfs at `folder` holding a bind mount of each host path."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "making mounts private")
    _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k", f"a tmpfs at {folder}")
    for name, source in binds:
        target = os.path.join(folder, name)
        if os.path.isdir(source):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(source, target, None, MS_BIND | MS_REC, None, f"binding {source}")


def become(uid: int) -> None:
    """The sandbox's host uid and gid: real, effective and saved; no groups, so no capabilities."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def parse(argv: list[str]) -> tuple[int, str, list[tuple[str, str]], list[str]]:
    """(uid, stage folder, [(name, host path)], bwrap command) from this script's argv."""
    try:
        end = argv.index("--")
        uid, folder, pairs, command = int(argv[1]), argv[2], argv[3:end], argv[end + 1:]
    except (ValueError, IndexError):
        raise SystemExit("usage: stage.py UID STAGE [NAME HOST_PATH]... -- BWRAP [ARG...]") from None
    if len(pairs) % 2 or not command:
        raise SystemExit("usage: stage.py UID STAGE [NAME HOST_PATH]... -- BWRAP [ARG...]")
    return uid, folder, list(zip(pairs[::2], pairs[1::2])), command


def main(argv: list[str]) -> None:
    uid, folder, binds, command = parse(argv)
    step = "creating the namespaces"
    try:
        enter_namespaces(uid)
        step = "staging"
        stage(folder, binds)
        step = f"switching to uid {uid}"
        become(uid)
        step = f"starting {command[0]}"
        os.execv(command[0], command)
    except (StageError, OSError) as exc:
        sources = ", ".join(source for _, source in binds)
        sys.stderr.write(f"ace-sandbox-stage: could not make {sources} reachable to the sandbox user "
                         f"(uid {uid}): {step}: {exc}\n")
        sys.stderr.flush()
        os._exit(EXIT_STAGE)


if __name__ == "__main__":
    main(sys.argv)
