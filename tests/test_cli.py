import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ACE = str(Path(sys.executable).with_name("ace"))


def ace(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ACE, *args], capture_output=True, text=True, input=stdin, env=dict(os.environ), timeout=120)


@pytest.mark.parametrize("cmd", [[], ["run"], ["worker"], ["serve"], ["bench"], ["playbook"], ["playbook", "diff"],
                                 ["info"], ["reembed"]])
def test_help_everywhere(cmd: list[str]) -> None:
    r = ace(*cmd, "--help")
    assert r.returncode == 0 and "usage: ace" in r.stdout


def test_run_sandbox_only_prints_trace_and_exit_codes(db_url, tmp_path: Path) -> None:
    code = tmp_path / "prog.py"
    code.write_text("def double(x):\n    return 2 * x\nprint(double(21))\n")
    tests = tmp_path / "tests.py"
    tests.write_text("assert double(2) == 4\n")
    r = ace("run", "double a number", "--code", str(code), "--tests", str(tests), "--playbook", "cli")
    assert r.returncode == 0, r.stderr
    assert "[execute #1]" in r.stdout and "isolation:" in r.stdout and "PASSED 1/1" in r.stdout
    assert "| 42" in r.stdout
    tests.write_text("assert double(2) == 5\n")
    r = ace("run", "double a number", "--code", str(code), "--tests", str(tests))
    assert r.returncode == 1 and "FAILED 0/1" in r.stdout


def test_run_without_a_model_says_what_to_set(db_url) -> None:
    r = ace("run", "write hello world")
    assert r.returncode == 3 and "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr


def test_bad_usage(db_url) -> None:
    assert ace("run", "x", "--tests", "/no/such/file").returncode == 2
    assert ace("run", "x", "--language", "cobol").returncode == 2
    r = ace("playbook", "show", "nope")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_playbook_commands(db_url, tmp_path: Path) -> None:
    src = tmp_path / "pb.txt"
    src.write_text("## pitfalls\n[str-00001] helpful=2 harmful=0 :: Close files with a with-block\n")
    assert ace("playbook", "import", "p", str(src)).returncode == 0
    assert "[str-00001] helpful=2 harmful=0 :: Close files" in ace("playbook", "show", "p").stdout
    exported = ace("playbook", "export", "p").stdout
    assert json.loads(exported)["bullets"][0]["id"] == "str-00001"
    md = ace("playbook", "export", "p", "--format", "markdown").stdout
    assert md.startswith("# p")
    assert ace("playbook", "import", "p", "-", "--replace", stdin=md.replace("Close files", "Open files")).returncode == 0
    d = ace("playbook", "diff", "p", "1", "2").stdout
    assert "- [str-00001] Close files" in d and "Open files" in d
    r = ace("playbook", "restore", "p", "1")
    assert r.returncode == 0 and "as version 3" in r.stdout
    assert "v3" in ace("playbook", "versions", "p").stdout
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"skills": {"x": ')
    r = ace("playbook", "import", "p", str(bad))
    assert r.returncode == 2 and "invalid JSON" in r.stderr
