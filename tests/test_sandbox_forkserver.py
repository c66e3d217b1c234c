"""The fork server: one run can never observe or influence the next, and servers are
discarded, not reused, whenever a run could have left something behind."""

import os
import threading
import time

import pytest

from core.config import load_settings
from core.sandbox import forkserver
from core.sandbox.local import LocalSandbox

SANDBOX_MODES = ("forkserver",)  # `sb` (conftest.py) is the fork server only


def _one_server(sb) -> int:
    """Make sure exactly one idle server exists and return its bubblewrap pid."""
    forkserver.shutdown_all()
    assert sb.run("print('warm')").stdout == "warm\n"
    pids = forkserver.server_pids()
    assert len(pids) == 1
    return next(iter(pids))


def test_runs_are_reused_processes_but_see_a_clean_sandbox(sb):
    server = _one_server(sb)
    leave = (
        "import os, subprocess\n"
        "for d in ('/home/user', '/tmp', '/dev/shm'):\n"
        "    open(d + '/left-behind', 'w').write('x')\n"
        "os.makedirs('/tmp/deep/er', exist_ok=True); open('/tmp/deep/er/f', 'w').write('x')\n"
        "os.chmod('/tmp/deep/er', 0); os.chmod('/tmp/deep', 0o500); os.chmod('/home/user', 0o500)\n"
        "subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "os.environ['LEAK'] = '1'\n"
        "import sys; sys.modules['json'].LEAK = 1\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    ex = sb.run(leave)
    assert ex.ok, ex.stderr
    look = (
        "import os, sys, json\n"
        "print(sorted(os.listdir('/home/user')), os.listdir('/tmp'), os.listdir('/dev/shm'))\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()) == sorted({'1', str(os.getpid())}))\n"
        "print('LEAK' in os.environ, hasattr(json, 'LEAK'), oct(os.stat('/home/user').st_mode & 0o777))\n"
    )
    ex = sb.run(look)
    assert ex.ok, ex.stderr
    assert ex.logs.stdout == ["['main.py'] [] []\n", "True\n", "False False 0o755\n"]
    assert forkserver.server_pids() == {server}  # the same server did both runs


def test_the_program_cannot_reach_the_server(sb):
    code = (
        "import os, signal\n"
        "print(os.getppid())\n"
        "for path in ('/proc/1/environ', '/proc/1/mem', '/proc/1/fd'):\n"
        "    try:\n"
        "        open(path, 'rb').read(1) if not path.endswith('fd') else os.listdir(path)\n"
        "        print(path, 'OPEN')\n"
        "    except OSError as e:\n"
        "        print(path, 'denied')\n"
        "print(sorted(os.listdir('/proc/self/fd')))\n"
        "os.kill(1, signal.SIGKILL)\n"
        "try:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
        "print('alive')\n"
    )
    server = _one_server(sb)
    ex = sb.run(code)
    assert ex.ok, ex.stderr
    assert ex.logs.stdout[0] == "1\n"
    assert all(line.endswith("denied\n") for line in ex.logs.stdout[1:4]), ex.logs.stdout
    assert ex.logs.stdout[4] == "['0', '1', '2', '3', '4']\n"  # stdin/out/err, results, the listdir itself
    assert ex.logs.stdout[5] == "alive\n"
    assert forkserver.server_pids() == {server}


@pytest.mark.parametrize("leftover", [
    "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.shmget(0x4143, 4096, 0o1600) >= 0)",  # System V shm
    "open('/dev/mqueue/ace', 'w').close()\nprint(True)",  # a POSIX message queue
    "import ctypes\nprint(ctypes.CDLL(None).syscall(248, b'user', b'ace', b'v', 1, -4) > 0)",  # add_key @u
    # things a process of the same uid may do to the server, which its next child would inherit
    "import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (16, 16))\nprint(True)",
    "import os\nos.setpriority(os.PRIO_PROCESS, 1, 19)\nprint(True)",
    "import os\nos.sched_setaffinity(1, {min(os.sched_getaffinity(1))})\nprint(True)",
    "import os\nos.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))\nprint(True)",
])
def test_state_outside_the_file_system_discards_the_server(sb, leftover):
    server = _one_server(sb)
    ex = sb.run(leftover)
    assert ex.ok and ex.stdout == "True\n", ex.stderr
    assert server not in forkserver.server_pids()
    ex = sb.run("import os, resource\nprint(open('/proc/sysvipc/shm').read().count('\\n'), os.listdir('/dev/mqueue'),"
                " open('/proc/keys').read().count('ace'), resource.getrlimit(resource.RLIMIT_NOFILE)[1],"
                " os.getpriority(os.PRIO_PROCESS, 1), os.sched_getscheduler(0), sorted(os.sched_getaffinity(0)))")
    assert ex.stdout == f"1 [] 0 256 0 {os.SCHED_OTHER} {sorted(os.sched_getaffinity(0))}\n"


def test_a_timeout_discards_the_server(sb):
    server = _one_server(sb)
    t = time.monotonic()
    ex = sb.run("open('/tmp/mark', 'w').write('x')\nwhile True:\n    pass", timeout=1)
    assert ex.timed_out and time.monotonic() - t < 4
    assert server not in forkserver.server_pids()
    assert sb.run("import os; print(os.path.exists('/tmp/mark'))").stdout == "False\n"


def test_concurrent_runs_use_one_server_each(sb):
    forkserver.shutdown_all()
    results: list[str] = []

    def one(i: int) -> None:
        code = f"import time, os\nopen('/tmp/mine', 'a').write('{i}')\ntime.sleep(0.3)\nprint(open('/tmp/mine').read())"
        results.append(sb.run(code).stdout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [f"{i}\n" for i in range(4)]
    assert 1 <= len(forkserver.server_pids()) <= 4


def test_servers_survive_the_thread_that_started_them(sb):
    forkserver.shutdown_all()
    box: list[str] = []
    th = threading.Thread(target=lambda: box.append(sb.run("print('from a thread')").stdout))
    th.start()
    th.join()  # bubblewrap's parent-death signal must not fire now
    assert box == ["from a thread\n"]
    time.sleep(0.2)  # not a wait for anything: time for a wrong parent-death signal to kill the server
    pids = forkserver.server_pids()
    assert len(pids) == 1
    assert sb.run("print('again')").stdout == "again\n"
    assert forkserver.server_pids() == pids


def test_shutdown_kills_every_server(sb):
    sb.run("print(1)")
    pids = forkserver.server_pids()
    assert pids
    forkserver.shutdown_all()
    assert forkserver.server_pids() == set()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_fresh_mode_is_still_available():
    box = LocalSandbox(load_settings(env={"ACE_SANDBOX_FORKSERVER": "0"}), reuse=False)
    assert not box.reuse and "fork server" not in box.isolation
    assert box.run("import os; print(os.getpid())").ok


def test_a_crashed_idle_server_is_replaced_without_losing_the_run(sb):
    server = _one_server(sb)
    with open(f"/proc/{server}/task/{server}/children") as fh:
        inner = int(fh.read().split()[0])
    os.kill(inner, 9)  # the server dies while idle, as if it had crashed
    ex = sb.run("print('still served')")
    assert ex.ok and ex.stdout == "still served\n"
    assert server not in forkserver.server_pids()


def test_a_server_killed_during_a_run_is_an_error_not_a_success(sb):
    server = _one_server(sb)
    with open(f"/proc/{server}/task/{server}/children") as fh:
        inner = int(fh.read().split()[0])
    killed = threading.Event()

    def kill_once_started(text: str) -> None:  # the program is running: kill its server under it
        if "started" in text and not killed.is_set():
            killed.set()
            os.kill(inner, 9)

    ex = sb.run("import time\nprint('started', flush=True)\ntime.sleep(5)\nprint('finished')", timeout=10,
                on_stdout=kill_once_started)
    assert killed.is_set()
    assert not ex.ok and ex.error.name == "KilledError" and not ex.timed_out
    assert ex.stdout == "started\n"
    assert server not in forkserver.server_pids()
