"""Adversarial programs: each must be contained and leave this process healthy.

Every test runs against a fresh sandbox per run and against the fork server (`sb`, conftest.py)."""

import os
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from core.sandbox import forkserver
from core.sandbox import isolation as iso
from tests.support import wait_for


def _host_processes_matching(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, uid, comm) for every host process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            table[int(entry.name)] = (ppid, uid, comm)
    return table


def _sandbox_uid_processes() -> list[int]:
    """Processes owned by the sandbox uid pool that should not exist after a run.

    That is: any started by this test process except the idle fork servers
    (bubblewrap and the server it runs), and any, whoever started it, that is
    in no bubblewrap sandbox at all (it escaped). Sandboxes of other processes
    on this machine (other test runs) are not this test's business.
    """
    table = _process_table()
    servers = forkserver.server_pids()
    allowed = servers | {pid for pid, (ppid, _, _) in table.items() if ppid in servers}
    me = os.getpid()
    stray = []
    for pid, (_, uid, _) in table.items():
        if not iso.HOST_UID_BASE <= uid < iso.HOST_UID_BASE + iso.HOST_UID_COUNT or pid in allowed:
            continue
        chain, cur = [], pid
        while cur in table and cur not in chain and cur > 1:
            chain.append(cur)
            cur = table[cur][0]
        if me in chain or not any(table[p][2] == "bwrap" for p in chain):
            stray.append(pid)
    return stray


def _assert_host_healthy() -> None:
    assert subprocess.run(["true"], timeout=10).returncode == 0
    wait_for(lambda: _sandbox_uid_processes() == [], timeout=3,
             message=lambda: f"sandbox processes outlived their run: {_sandbox_uid_processes()}")
    assert _sandbox_uid_processes() == []


def test_parent_secrets_are_not_visible(sb, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-123")
    monkeypatch.setenv("E2B_API_KEY", "e2b-very-secret-456")
    code = (
        "import os, glob\n"
        "print(sorted(os.environ))\n"
        "blob = ''\n"
        "for p in glob.glob('/proc/*/environ'):\n"
        "    try:\n        blob += open(p, 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n        pass\n"
        "print('secret' in blob or 'secret' in str(os.environ))\n"
    )
    ex = sb.run(code)
    assert ex.ok, ex.stderr
    assert "OPENAI_API_KEY" not in ex.stdout and "E2B_API_KEY" not in ex.stdout
    assert ex.logs.stdout[-1] == "False\n"


def test_host_processes_are_invisible(sb):
    code = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "cmds = ' '.join(open(f'/proc/{p}/cmdline', 'rb').read().decode(errors='replace') for p in pids)\n"
        "print(len(pids), 'pytest' in cmds, os.getuid(), os.getppid())\n"
    )
    ex = sb.run(code)
    count, sees_pytest, uid, _ = ex.stdout.split()
    assert int(count) <= 3 and sees_pytest == "False" and uid == "65534"
    assert str(os.getpid()) not in sb.run("import os; print(os.listdir('/proc'))").stdout.split("'")


def test_root_project_and_database_are_absent(sb, tmp_path):
    db = tmp_path / "secret.db"
    import sqlite3

    sqlite3.connect(db).execute("create table t(x)").connection.commit()
    paths = ["/root", str(PROJECT_ROOT), str(PROJECT_ROOT / "data"), str(db), "/home/user/../../root",
             "/etc/shadow", "/etc/passwd", str(Path.home())]
    code = "import os\n" + "".join(f"print(os.path.exists({p!r}))\n" for p in paths)
    ex = sb.run(code)
    assert ex.ok and ex.logs.stdout == ["False\n"] * len(paths), list(zip(paths, ex.logs.stdout))


def test_cannot_write_outside_the_work_directory(sb):
    marker = f"ace-escape-{os.getpid()}"
    targets = ["/usr/" + marker, "/etc/" + marker, "/opt/site-packages/" + marker, "/opt/ace/" + marker,
               "/" + marker, "/usr/lib/" + marker, "/dev/" + marker, "/proc/" + marker]
    code = (
        "import os\nok = []\n"
        f"for t in {targets!r}:\n"
        "    try:\n        open(t, 'w').write('x'); ok.append(t)\n"
        "    except OSError:\n        pass\n"
        "print('written', ok)\n"
        f"open('/tmp/{marker}', 'w').write('x')\nopen('/home/user/{marker}', 'w').write('x')\n"
        "import subprocess\n"
        "r = subprocess.run(['mount', '-o', 'remount,rw', '/usr'], capture_output=True)\n"
        "print('remount', r.returncode)\n"
    )
    ex = sb.run(code)
    assert ex.ok, ex.stderr
    assert ex.logs.stdout[0] == "written []\n"
    assert ex.logs.stdout[1] != "remount 0\n"
    for t in targets:
        assert not Path(t).exists()
    assert not Path("/tmp", marker).exists()


def test_fork_bomb_is_bounded(sb):
    counter = (
        "import os, time\nn = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n            time.sleep(20)\n            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n    print(n, e.errno)\n"
    )
    ex = sb.run(counter, timeout=10)
    forked, errno = map(int, ex.stdout.split())
    assert forked < sb.nproc and errno == 11  # EAGAIN: RLIMIT_NPROC holds (not root on the host)
    t = time.monotonic()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ex = sb.run(bomb, timeout=3)
    assert ex.timed_out and time.monotonic() - t < 8
    _assert_host_healthy()


def test_bash_fork_bomb(sb):
    if sb.reuse:
        pytest.skip("bash always runs in a fresh sandbox")
    t = time.monotonic()
    ex = sb.run(":(){ :|:& };:", "bash", timeout=3)
    assert time.monotonic() - t < 8
    assert not ex.ok or ex.exit_code is not None
    _assert_host_healthy()


def test_memory_bomb(sb):
    ex = sb.run("x = bytearray(4 * 1024 ** 3)", timeout=10)
    assert ex.error.name == "MemoryError"
    ex = sb.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))", timeout=10)
    assert ex.error.name == "MemoryError"
    if not sb.reuse:  # javascript always runs in a fresh sandbox
        ex = sb.run("let a = []; for (;;) a.push(new Array(1e6).fill(1.5));", "javascript", timeout=20)
        assert not ex.ok and not ex.timed_out
    _assert_host_healthy()


def test_filling_the_disk(sb):
    code = (
        "import os\n"
        "for where in ('/home/user', '/tmp', '/dev/shm'):\n"
        "    total = 0\n"
        "    try:\n"
        "        for i in range(10000):\n"
        "            with open(f'{where}/f{i}', 'wb') as fh:\n"
        "                fh.write(b'0' * (1 << 20))\n"
        "            total += 1\n"
        "    except OSError as e:\n"
        "        print(where, total, e.errno)\n"
    )
    ex = sb.run(code, timeout=20)
    assert ex.ok, ex.stderr
    for line in ex.logs.stdout:
        _, megabytes, _ = line.split()
        assert int(megabytes) <= sb.disk_mb
    assert len(ex.logs.stdout) == 3
    ex = sb.run("open('/home/user/big', 'wb').write(b'0' * (200 << 20))", timeout=20)
    assert not ex.ok  # one huge file: RLIMIT_FSIZE / tmpfs size


def test_infinite_loop_ignoring_sigterm(sb):
    code = ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('spinning', flush=True)\nwhile True:\n    pass")
    t = time.monotonic()
    ex = sb.run(code, timeout=1.5)
    assert ex.timed_out and ex.stdout == "spinning\n"
    assert time.monotonic() - t < 4
    _assert_host_healthy()


def test_setsid_grandchild_cannot_outlive_the_run(sb):
    tag = f"sleep {4000 + os.getpid() % 1000}"
    code = (
        "import subprocess, os\n"
        f"subprocess.Popen(['sh', '-c', 'while true; do echo tick; {tag}; done'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    import time\n"
        "    while True:\n        print('daemon', flush=True)\n        time.sleep(0.1)\n"
        "print('parent exits')\n"
    )
    t = time.monotonic()
    ex = sb.run(code, timeout=20)
    assert time.monotonic() - t < 5  # returned when the program ended, not at the deadline
    assert "parent exits" in ex.stdout and not ex.timed_out
    wait_for(lambda: _host_processes_matching(tag) == [], timeout=3, message=f"`{tag}` outlived the run")
    assert _host_processes_matching(tag) == []
    _assert_host_healthy()


def test_huge_output_is_capped(sb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = ("import sys\nline = 'x' * 1023 + '\\n'\n"
            "for _ in range(100 * 1024):\n    sys.stdout.write(line)\nprint('end', file=sys.stderr)")
    ex = sb.run(code, timeout=60)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert ex.truncated
    assert len(ex.stdout) <= sb.max_output
    assert ex.stderr == "end\n"  # the other stream is still read
    assert grown_mb < 40, grown_mb


def test_no_network_to_the_hosts_loopback(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = (
        "import socket\n"
        f"for host in ('127.0.0.1', 'localhost', '10.0.2.2', '1.1.1.1'):\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=1); print(host, 'CONNECTED')\n"
        "    except OSError as e:\n        print(host, 'blocked')\n"
    )
    ex = sb.run(code, timeout=20)
    thread.join()
    server.close()
    assert ex.ok, ex.stderr
    assert "CONNECTED" not in ex.stdout and ex.stdout.count("blocked") == 4
    assert accepted == []


def test_killing_the_parent_does_not_reach_the_host(sb):
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1, -1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as e:\n        print('kill', pid, e.errno)\n"
        "print('still here')\n"
    )
    ex = sb.run(code, timeout=10)
    assert not ex.timed_out
    os.kill(os.getpid(), 0)  # this process is alive
    assert sb.run("print('next run ok')").stdout == "next run ok\n"
    _assert_host_healthy()
