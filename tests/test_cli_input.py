"""Bad input to `ace`, command by command: always exit 2 and one line on stderr, never a traceback.

Exit 3 stays for work that could not run (no model, no sandbox): bad input is exit 2 even when no
model is configured (these tests run without one). The cases call `core.cli.main(argv)` in this
process; the last ones run the installed `ace` script with raw bytes a shell could pass.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main
from tests.support import ACE, Ran


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """Named inputs: good ones and every kind of bad file."""
    made = {
        "ok": tmp_path / "ok.py",
        "bin": tmp_path / "binary.dat",
        "nul": tmp_path / "nul.py",
        "nul_md": tmp_path / "nul.md",
        "big": tmp_path / "big.py",
        "deep": tmp_path / "deep.json",
        "deep_array": tmp_path / "deep_array.json",
        "pb": tmp_path / "pb.txt",
    }
    made["ok"].write_text("print(1)\n")
    made["bin"].write_bytes(b"\x80\x81\xff\xfe not text")
    made["nul"].write_bytes(b"print(1)\x00\n")
    made["nul_md"].write_bytes(b"## s\n[str-00001] helpful=1 harmful=0 :: a\x00b\n")
    made["big"].write_bytes(b"#" * 10_000_001)
    made["deep"].write_text('{"bullets": ' + "[" * 100_000 + "]" * 100_000 + "}")
    made["deep_array"].write_text("[" * 100_000 + "]" * 100_000)
    made["pb"].write_text("## pitfalls\n[str-00001] helpful=2 harmful=0 :: Close files with a with-block\n")
    names = {k: str(v) for k, v in made.items()}
    names["missing"] = str(tmp_path / "missing.py")
    names["dir"] = str(tmp_path)
    names["no_dir"] = str(tmp_path / "no" / "such" / "out.json")
    return names


@pytest.fixture()
def ace(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db_url: str):
    def run(*args: str, stdin: bytes = b"") -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse exits
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def assert_bad_input(r: Ran, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.startswith("ace: ") and r.stderr.count("\n") == 1, r.stderr  # one line
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


RUN_CASES = [
    (["run", "x", "--code", "{bin}"], "not UTF-8 text"),
    (["run", "x", "--code", "{ok}", "--tests", "{bin}"], "--tests"),
    (["run", "x", "--code", "{ok}", "--expected", "{bin}"], "--expected"),
    (["run", "x", "--code", "{nul}"], "NUL byte"),
    (["run", "x", "--code", "{big}"], "over 10,000,000 bytes"),
    (["run", "x", "--code", "{missing}"], "no such file"),
    (["run", "x", "--code", "{dir}"], "not a file"),
    (["run", "x", "--code", "{ok}", "--playbook", "../../x"], "invalid playbook id"),
    (["run", "x\ud800y", "--code", "{ok}"], "lone surrogate"),
    (["run", "x\x00y", "--code", "{ok}"], "NUL byte"),
    (["run", "x", "--code", "{ok}", "--playbook", "p\udcff"], "lone surrogate"),
    (["run", "", "--code", "{ok}"], "invalid task"),
    (["run", "x", "--code", "{ok}", "--max-iterations", "0"], "--max-iterations"),
    (["run", "x", "--code", "{ok}", "-k", "-1"], "-k"),
    (["run", "x", "--code", "{ok}", "-k", "100000"], "k:"),
    (["run", "x", "--language", "cobol"], "invalid choice"),
    (["run"], "required"),
]

PLAYBOOK_CASES = [
    (["playbook", "versions", "nope"], "playbook 'nope' does not exist"),
    (["playbook", "diff", "nope", "0", "5"], "playbook 'nope' does not exist"),
    (["playbook", "diff", "p", "0", "99"], "has no version 99"),
    (["playbook", "diff", "p", "-1", "0"], "must be 0 or more"),
    (["playbook", "diff", "p", "x", "0"], "invalid int value"),
    (["playbook", "restore", "nope", "1"], "does not exist"),
    (["playbook", "restore", "p", "7"], "has no version 7"),
    (["playbook", "show", "../../x"], "invalid playbook id"),
    (["playbook", "show", "nope"], "does not exist"),
    (["playbook", "export", "nope"], "does not exist"),
    (["playbook", "export", "p", "-o", "{no_dir}"], "no such folder"),
    (["playbook", "export", "p", "-o", "{dir}"], "is a folder"),
    (["playbook", "import", "p", "{deep}"], "deep"),
    (["playbook", "import", "p", "{deep_array}"], ""),
    (["playbook", "import", "p", "{bin}"], "UTF-8"),
    (["playbook", "import", "p", "{nul_md}"], "NUL byte"),
    (["playbook", "import", "p", "{missing}"], "no such file"),
    (["playbook", "import", "p", "{dir}"], "not a file"),
    (["playbook", "import", "../x", "{pb}"], "invalid playbook id"),
    (["playbook", "import", "x\ud800", "{pb}"], "lone surrogate"),
    (["playbook"], "required"),
    (["playbook", "frobnicate"], "invalid choice"),
    (["reembed", "nope"], "does not exist"),
    (["reembed", "../x"], "invalid playbook id"),
]

OTHER_CASES = [
    (["bench", "nope"], "no suite 'nope'"),
    (["bench", "humaneval", "--split", "abc"], "invalid split"),
    (["bench", "humaneval", "--limit", "0"], "--limit"),
    (["bench", "humaneval", "--epochs", "1000"], "--epochs"),
    (["bench", "humaneval", "--concurrency", "1000"], "--concurrency"),
    (["bench", "humaneval", "--playbook", "../x"], "invalid playbook id"),
    (["bench", "humaneval", "--csv", "{no_dir}"], "no such folder"),
    (["bench", "--resume", "nope"], "does not exist"),
    (["bench", "--add", "x", "{bin}"], "UTF-8"),
    (["bench", "--add", "../x", "{pb}"], "invalid suite name"),
    (["bench", "--add", "x"], "needs the path"),
    (["serve", "--port", "70000"], "0-65535"),
    (["serve", "--port", "-1"], "0-65535"),
    (["serve", "--host", "not a host"], "--host"),
    (["worker", "--poll", "0"], "positive"),
    (["worker", "--poll", "nan"], "positive"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize(("args", "needle"), RUN_CASES + PLAYBOOK_CASES + OTHER_CASES,
                         ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_bad_input_exits_2_with_one_line(ace, files: dict[str, str], args: list[str], needle: str) -> None:
    assert ace("playbook", "import", "p", files["pb"]).returncode == 0  # an existing playbook, at version 1
    r = ace(*[a.format(**files) for a in args])
    assert_bad_input(r, needle)


def test_good_input_still_works(ace, files: dict[str, str]) -> None:
    """The checks refuse only what is bad: the same commands with good input still run."""
    assert ace("playbook", "import", "p", files["pb"]).returncode == 0
    assert "v1" in ace("playbook", "versions", "p").stdout
    assert ace("playbook", "diff", "p", "0", "1").stdout.startswith("+ [str-00001]")
    assert ace("playbook", "export", "p", "-o", files["dir"] + "/out.json").returncode == 0
    assert ace("reembed", "p").returncode == 0
    r = ace("run", "print one", "--code", files["ok"], "--playbook", "p")
    assert r.returncode == 0, r.stderr


def test_nothing_is_written_for_bad_input(ace, files: dict[str, str]) -> None:
    ace("playbook", "diff", "nope", "0", "5")
    ace("playbook", "restore", "nope", "1")
    ace("reembed", "nope")
    assert "nope" not in ace("playbook", "list").stdout


def _shell(*args: bytes | str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ACE, *args], capture_output=True, env=dict(os.environ), timeout=120, cwd=cwd)


def test_the_installed_script_with_raw_bytes(db_url: str, files: dict[str, str], tmp_path: Path) -> None:
    """What a shell passes: a task that is not UTF-8, deep JSON on import; exit 2, one line, no traceback."""
    for args, needle in (
        ([b"run", b"caf\xe9 \xff", b"--code", files["ok"].encode()], b"lone surrogate"),
        ([b"playbook", b"import", b"p", files["deep"].encode()], b"deep"),
        ([b"run", b"x", b"--code", files["bin"].encode()], b"not UTF-8"),
    ):
        r = _shell(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert b"Traceback" not in r.stderr and r.stderr.count(b"\n") == 1 and needle in r.stderr, r.stderr
    # a file name that is not UTF-8 is still a file name
    odd = tmp_path / os.fsdecode(b"prog-\xff.py")
    odd.write_text("print(6 * 7)\n")
    r = _shell(b"run", b"multiply", b"--code", os.fsencode(odd), cwd=tmp_path)
    assert r.returncode == 0 and b"| 42" in r.stdout, r.stderr


def test_a_reader_that_goes_away_ends_it_quietly(db_url: str, tmp_path: Path) -> None:
    """`ace playbook show p | head`: exit 141 like any shell tool, nothing on stderr."""
    src = tmp_path / "many.md"
    src.write_text("## s\n" + "".join(f"[str-{i:05d}] helpful=1 harmful=0 :: bullet number {i} with some text\n"
                                      for i in range(1, 3001)))
    assert _shell("playbook", "import", "p", str(src), cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([ACE, "playbook", "show", "p"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ), cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == b"", err
