"""`ace` as a shell sees it: exit codes, what goes to stdout and what to stderr.

The cases call `core.cli.main(argv)` in this process, which is what the `ace` console script
runs; one smoke test at the end runs the installed script itself.
"""

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.cli import main
from tests.support import ACE, Ran

Ace = Callable[..., Ran]


@pytest.fixture()
def ace(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Ace:
    """`ace(*args, stdin=None)`: run the CLI in process and return its exit code and output."""

    def run(*args: str, stdin: str | None = None) -> Ran:
        capsys.readouterr()  # drop what came before: only this command's output
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((stdin or "").encode())))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse (--help, bad usage) and unreadable input files exit
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # what the interpreter does with sys.exit("message")
                print(exc.code, file=sys.stderr)
                code = 1
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def write_program(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "prog.py"
    code.write_text("def double(x):\n    return 2 * x\nprint(double(21))\n")
    tests = tmp_path / "tests.py"
    tests.write_text("assert double(2) == 4\n")
    return code, tests


@pytest.mark.parametrize("cmd", [[], ["run"], ["worker"], ["serve"], ["bench"], ["playbook"], ["playbook", "diff"],
                                 ["info"], ["reembed"]])
def test_help_everywhere(ace: Ace, cmd: list[str]) -> None:
    r = ace(*cmd, "--help")
    assert r.returncode == 0 and "usage: ace" in r.stdout


def test_run_sandbox_only_prints_trace_and_exit_codes(ace: Ace, db_url, tmp_path: Path) -> None:
    code, tests = write_program(tmp_path)
    r = ace("run", "double a number", "--code", str(code), "--tests", str(tests), "--playbook", "cli")
    assert r.returncode == 0, r.stderr
    assert "[execute #1]" in r.stdout and "isolation:" in r.stdout and "PASSED 1/1" in r.stdout
    assert "| 42" in r.stdout
    tests.write_text("assert double(2) == 5\n")
    r = ace("run", "double a number", "--code", str(code), "--tests", str(tests))
    assert r.returncode == 1 and "FAILED 0/1" in r.stdout


def test_run_without_a_model_says_what_to_set(ace: Ace, db_url) -> None:
    r = ace("run", "write hello world")
    assert r.returncode == 3 and "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr


def test_bad_usage(ace: Ace, db_url) -> None:
    assert ace("run", "x", "--tests", "/no/such/file").returncode == 2
    assert ace("run", "x", "--language", "cobol").returncode == 2
    r = ace("playbook", "show", "nope")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_playbook_commands(ace: Ace, db_url, tmp_path: Path) -> None:
    src = tmp_path / "pb.txt"
    src.write_text("## pitfalls\n[str-00001] helpful=2 harmful=0 :: Close files with a with-block\n")
    assert ace("playbook", "import", "p", str(src)).returncode == 0
    assert "[str-00001] helpful=2 harmful=0 :: Close files" in ace("playbook", "show", "p").stdout
    exported = ace("playbook", "export", "p").stdout
    assert json.loads(exported)["bullets"][0]["id"] == "str-00001"
    md = ace("playbook", "export", "p", "--format", "markdown").stdout
    assert md.startswith("# p")
    r = ace("playbook", "import", "p", "-", "--replace", stdin=md.replace("Close files", "Open files"))
    assert r.returncode == 0
    d = ace("playbook", "diff", "p", "1", "2").stdout
    assert "- [str-00001] Close files" in d and "Open files" in d
    r = ace("playbook", "restore", "p", "1")
    assert r.returncode == 0 and "as version 3" in r.stdout
    assert "v3" in ace("playbook", "versions", "p").stdout
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"skills": {"x": ')
    r = ace("playbook", "import", "p", str(bad))
    assert r.returncode == 2 and "invalid JSON" in r.stderr


def test_the_installed_console_script(db_url, tmp_path: Path) -> None:
    """Smoke test of the real `ace` executable: entry point, exit code, output streams."""

    def shell(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ACE, *args], capture_output=True, text=True, env=dict(os.environ), timeout=120)

    r = shell("--help")
    assert r.returncode == 0 and "usage: ace" in r.stdout
    code, tests = write_program(tmp_path)
    r = shell("run", "double a number", "--code", str(code), "--tests", str(tests))
    assert r.returncode == 0, r.stderr
    assert "[execute #1]" in r.stdout and "PASSED 1/1" in r.stdout and "| 42" in r.stdout
