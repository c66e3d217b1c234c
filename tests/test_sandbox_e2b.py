"""The E2B backend through the real SDK in debug mode, against a local fake server."""

import httpx
import pytest

from core.config import load_settings
from core.sandbox import SandboxUnavailable, get_sandbox
from core.sandbox.e2b import E2bSandbox
from core.sandbox.local import LocalSandbox
from tests.fake_e2b_server import FakeE2bServer

PROGRAMS = [
    ("print('hello')\nprint(2 + 3)", "python"),
    ("import sys\nprint('to stderr', file=sys.stderr)\nprint('out')", "python"),
    ("def f():\n    raise ValueError('bad value')\nprint('before')\nf()", "python"),
    ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('plotted')", "python"),
    ("console.log('js', 1 + 1)", "javascript"),
    ("echo from bash", "bash"),
]


@pytest.fixture(scope="module")
def local():
    return LocalSandbox(load_settings(env={}))


@pytest.fixture(scope="module")
def server(local):
    with FakeE2bServer(local) as srv:
        yield srv


@pytest.mark.parametrize("code,language", PROGRAMS)
def test_e2b_and_local_executions_are_equal(server, local, code, language):
    with E2bSandbox(load_settings(env={}), debug=True) as e2b:
        remote = e2b.run(code, language, timeout=60)
    here = local.run(code, language, timeout=60)
    assert remote.comparable() == here.comparable()
    assert server.requests[-1]["code"] == code and server.requests[-1]["language"] == language


def test_one_sandbox_reused_and_streaming(server):
    lines: list[str] = []
    box = E2bSandbox(load_settings(env={}), debug=True)
    box.run("print('a')", on_stdout=lines.append)
    first = box._sbx
    box.run("print('b')", on_stdout=lines.append)
    assert box._sbx is first  # one sandbox across the attempts
    assert lines == ["a\n", "b\n"]
    box.close()
    assert box._sbx is None


def test_error_path_kills_the_sandbox():
    # nothing listens on this port: the SDK raises, and the sandbox is dropped (killed)
    box = E2bSandbox(load_settings(env={}), debug=True)

    box._sandbox()
    box._sbx.connection_config._sandbox_url = "http://127.0.0.1:9"
    with pytest.raises(httpx.ConnectError):
        box.run("print(1)")
    assert box._sbx is None


def test_e2b_needs_a_key():
    with pytest.raises(SandboxUnavailable, match="E2B_API_KEY"):
        get_sandbox("e2b", settings=load_settings(env={}))
    assert get_sandbox("e2b", settings=load_settings(env={"E2B_API_KEY": "k"})).isolation == "e2b cloud"
