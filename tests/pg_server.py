"""A throwaway PostgreSQL for tests and benchmarks: `initdb` into a temporary folder, 127.0.0.1 on a
free port, removed afterwards. Debian's `postgresql` package provides the binaries (scripts/system-deps.sh
installs it); as root they run as the `postgres` user, which PostgreSQL requires.

Each test gets its own database, copied from a migrated template (`CREATE DATABASE ... TEMPLATE`), so a
test starts from the schema at head in tens of milliseconds instead of running every migration.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import psycopg

from tests.support import free_port


def pg_bin_dir() -> Optional[Path]:
    """The folder holding `initdb`, `pg_ctl` and `postgres`: PATH first, then Debian's versioned folders."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "initdb").exists():
            return Path(cand)
    return None


class ThrowawayPostgres:
    """One PostgreSQL server in a temporary folder. `start()`, `new_database()`, `stop()`."""

    def __init__(self, max_connections: int = 200) -> None:
        self.max_connections = max_connections
        self.bin = pg_bin_dir()
        self.port = 0
        self.folder: Optional[Path] = None
        self._n = 0
        self._lock = threading.Lock()
        self._template_ready = False

    # ------------------------------------------------------------------ lifecycle
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # from the server's own folder: as `postgres` the caller's folder may be unreadable (a 0700 checkout)
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120,
                              cwd=self.folder or tempfile.gettempdir())

    def start(self) -> "ThrowawayPostgres":
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: run `make system-deps` (Debian package `postgresql`)")
        self.folder = Path(tempfile.mkdtemp(prefix="ace-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        data = self.folder / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        self.port = free_port()
        self._launch()
        return self

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (dropping every connection) and start it again on the same port."""
        assert self.folder is not None and self.bin is not None
        data = self.folder / "data"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop")
        self._launch()

    def _launch(self) -> None:
        """Start the server on `self.port`: loopback only, fast and unsafe settings fit for a throwaway."""
        assert self.folder is not None and self.bin is not None
        opts = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                f"-c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-o", opts, "-l",
                  str(self.folder / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        if self.folder is None:
            return
        if self.bin is not None:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop",
                      check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    # ------------------------------------------------------------------ databases
    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(sql)

    def _ensure_template(self) -> None:
        """A database at the head revision, migrated once, that each test's database is copied from."""
        if self._template_ready:
            return
        from sqlalchemy import create_engine

        from core.storage import db

        self._admin("CREATE DATABASE ace_template")
        engine = create_engine(self.url("ace_template"))
        db.upgrade(engine)
        engine.dispose()
        self._template_ready = True

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database's URL: at head (copied from the template), or empty (`migrated=False`)."""
        with self._lock:
            self._n += 1
            name = f"ace_test_{self._n}"
            if migrated:
                self._ensure_template()
            template = "ace_template" if migrated else "template0"
            for attempt in range(50):  # the template must have no other session while it is copied
                try:
                    self._admin(f"CREATE DATABASE {name} TEMPLATE {template}")
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError(f"could not copy {template}: it stays in use")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
