"""Functional behaviour of the local sandbox: output, errors, languages, figures, streaming."""

import base64
import time

import pytest

from core.config import load_settings
from core.sandbox import SandboxUnavailable, get_sandbox
from core.sandbox import isolation as iso
from core.sandbox.local import LocalSandbox


def test_isolation_is_reported(sb):
    assert sb.isolation.startswith("bubblewrap")


def test_stdout_and_stderr(sb):
    ex = sb.run("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nprint('bye')")
    assert ex.logs.stdout == ["hello\n", "bye\n"]
    assert ex.stderr == "oops\n"
    assert ex.ok and ex.exit_code == 0 and ex.error is None and not ex.truncated
    assert ex.duration_ms > 0


def test_python_error_is_parsed(sb):
    ex = sb.run("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert ex.stdout == "before\n"
    assert ex.error is not None and not ex.ok
    assert (ex.error.name, ex.error.value) == ("ZeroDivisionError", "division by zero")
    assert 'File "/home/user/main.py", line 2, in f' in ex.error.traceback
    assert "launcher" not in ex.error.traceback
    assert ex.exit_code == 1


def test_syntax_error_and_custom_exception(sb):
    ex = sb.run("x = (")
    assert ex.error.name == "SyntaxError" and "never closed" in ex.error.value
    ex = sb.run("class MyErr(Exception):\n    pass\nraise MyErr('custom message')")
    assert (ex.error.name, ex.error.value) == ("MyErr", "custom message")


def test_sys_exit_and_builtins(sb):
    assert sb.run("import sys\nsys.exit(0)").ok
    ex = sb.run("exit(3)")
    assert ex.exit_code == 3 and ex.error.name == "ExitCodeError"
    assert sb.run("print(__name__)").stdout == "__main__\n"


def test_javascript(sb):
    ex = sb.run("console.log([1, 2].map(x => x * 2).join(','))", "javascript")
    assert ex.ok and ex.stdout == "2,4\n"
    ex = sb.run("console.log('a');\nnull.x", "javascript")
    assert ex.stdout == "a\n" and ex.error.name == "TypeError" and "null" in ex.error.value


def test_bash(sb):
    ex = sb.run("echo hi; echo err >&2; exit 4", "bash")
    assert ex.stdout == "hi\n" and ex.stderr == "err\n"
    assert ex.exit_code == 4 and ex.error.name == "ExitCodeError"
    assert sb.run("echo $((6 * 7))", "bash").stdout == "42\n"


def test_unknown_language(sb):
    with pytest.raises(ValueError):
        sb.run("x", "cobol")


def test_matplotlib_figures_become_png_results(sb):
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\nplt.show()\n"
        "plt.figure()\nplt.bar(['a', 'b'], [3, 5])\n"  # never shown: saved at exit, like a notebook
        "print('done')\n"
    )
    ex = sb.run(code, timeout=60)
    assert ex.ok, ex.stderr
    assert ex.stdout == "done\n" and ex.stderr == ""
    assert len(ex.results) == 2
    for result in ex.results:
        assert base64.b64decode(result.png).startswith(b"\x89PNG")


def test_figures_are_returned_when_the_code_picks_the_agg_backend(sb):
    code = ("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "plt.plot([0, 1], [1, 0])\nplt.show()\n")
    ex = sb.run(code, timeout=60)
    assert ex.ok, ex.stderr
    assert len(ex.results) == 1 and base64.b64decode(ex.results[0].png).startswith(b"\x89PNG")


def test_streaming_callbacks_arrive_live(sb):
    seen: list[tuple[float, str, str]] = []
    start = time.monotonic()
    code = "import sys, time\nprint('one')\nprint('warn', file=sys.stderr)\ntime.sleep(1.0)\nprint('two')"
    ex = sb.run(code, on_stdout=lambda s: seen.append((time.monotonic() - start, "out", s)),
                on_stderr=lambda s: seen.append((time.monotonic() - start, "err", s)))
    end = time.monotonic() - start
    assert [(k, s) for _, k, s in seen] == [("out", "one\n"), ("err", "warn\n"), ("out", "two\n")]
    assert seen[0][0] < end - 0.5  # the first line came before the program ended
    assert ex.logs.stdout == ["one\n", "two\n"]


def test_timeout_flag(sb):
    t = time.monotonic()
    ex = sb.run("import time\nprint('start')\ntime.sleep(30)", timeout=1)
    assert time.monotonic() - t < 3
    assert ex.timed_out and not ex.ok and ex.error.name == "TimeoutError"
    assert ex.stdout == "start\n"


def test_to_json_round_trip(sb):
    from core.sandbox import Execution

    ex = sb.run("print(1)")
    assert Execution.model_validate_json(ex.to_json()) == ex


def test_refuses_without_bubblewrap(monkeypatch):
    monkeypatch.setattr(iso, "probe", lambda: (None, "no bubblewrap binary"))
    with pytest.raises(SandboxUnavailable, match="ACE_ALLOW_UNISOLATED=1"):
        LocalSandbox(load_settings(env={}))
    box = LocalSandbox(load_settings(env={"ACE_ALLOW_UNISOLATED": "1"}))
    assert box.isolation.startswith("NONE")
    ex = box.run("import sys\nprint('unisolated', sys.argv[0].endswith('main.py'))\n1/0")
    assert ex.stdout == "unisolated True\n" and ex.error.name == "ZeroDivisionError"


def test_get_sandbox_backend_choice():
    with pytest.raises(ValueError):
        get_sandbox("nope")
    assert isinstance(get_sandbox(settings=load_settings(env={"ACE_SANDBOX": "local"})), LocalSandbox)


def test_long_output_keeps_its_head_and_its_tail(sb) -> None:
    """How a program stopped is at the end of what it printed: past the cap, the tail is kept too."""
    code = ("import sys\nfor i in range(200_000):\n    sys.stdout.write(f'line {i}\\n')\n"
            "print('THE END')\n")
    ex = sb.run(code, timeout=60)
    assert ex.truncated and len(ex.stdout) <= sb.max_output
    assert ex.stdout.startswith("line 0\nline 1\n")
    assert ex.stdout.endswith("line 199999\nTHE END\n")
    assert "KB of output cut here" in ex.stdout
