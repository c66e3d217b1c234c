"""One database shared by many processes: SQLite (the default) and PostgreSQL (a team's deployment).

Each test here runs on both (`both_dbs`) unless it is about something only PostgreSQL has (LISTEN/NOTIFY,
a server that restarts, connection pools). The PostgreSQL is a real server started for the session
(tests/pg_server.py); workers are real `ace worker` processes.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text

from core import config, jobs
from core import playbook as P
from core.loop import TaskSpec, submit_episode
from core.storage import db, wakeups
from core.storage.db import read_session
from core.storage.models import Episode, Event, Job, PlaybookVersion
from tests.pg_server import ThrowawayPostgres
from tests.support import wait_for

ACE = str(Path(sys.executable).with_name("ace"))
MIGRATIONS = Path(db.__file__).parent / "migrations"


def revisions() -> list[str]:
    """Every revision, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


@pytest.fixture(params=("sqlite", "postgresql"))
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables at all) of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    pg: ThrowawayPostgres = request.getfixturevalue("pg_server")
    url = pg.new_database(migrated=False)
    yield url
    db.dispose_engines()
    pg.drop_database(url)


def _engine(url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(db.database_url(url))
    if engine.dialect.name == "sqlite":
        db._install_sqlite_hooks(engine)
    return engine


def _no_schema_drift(engine) -> list:  # type: ignore[no-untyped-def]
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import core.storage.models  # noqa: F401

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    # FTS5's tables (SQLite) and the full-text GIN index (PostgreSQL) are the databases' own, not the models'
    return [d for d in diffs if not (d[0] == "remove_table" and d[1].name.startswith("bullet_fts"))
            and not (d[0] == "remove_index" and d[1].name == "ix_bullet_tsv")]


# ------------------------------------------------------------------ migrations


@pytest.mark.parametrize("start", revisions())
def test_migrations_from_every_revision_reach_head_and_keep_data(blank_url: str, start: str) -> None:
    engine = _engine(blank_url)
    db.upgrade(engine, start)
    with engine.begin() as conn:  # a playbook as every revision stores it
        conn.execute(text("INSERT INTO playbook (id, name, description, environment, current_version, next_seq, "
                          "created_at, modified_at) VALUES ('kept', 'kept', '', 'python', 0, 1, "
                          "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    db.upgrade(engine)
    assert _no_schema_drift(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM playbook")).scalars().all() == ["kept"]
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == revisions()[-1]
    engine.dispose()


def test_downgrade_to_base_and_up_again(blank_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = _engine(blank_url)
    db.upgrade(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "bullet" not in inspect(engine).get_table_names()
    db.upgrade(engine)
    assert _no_schema_drift(engine) == []
    engine.dispose()


def test_processes_starting_together_migrate_once(blank_url: str) -> None:
    """Four processes open an empty database at the same moment: one migrates, the others wait for it."""
    script = "from core.storage import db; db.get_engine(); print('ok')"
    env = {**os.environ, "ACE_DB_URL": blank_url}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    engine = _engine(blank_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [revisions()[-1]]
    engine.dispose()


# ------------------------------------------------------------------ no lost updates


@pytest.mark.both_dbs
def test_a_playbook_created_by_many_at_once_exists_once(db_url: str) -> None:
    errors: list[BaseException] = []
    topics = ["Parse dates with fromisoformat", "Normalise unicode before comparing strings",
              "Prefer iteration over deep recursion", "Sort with a key function, never cmp",
              "Round money with Decimal quantize", "Open files in a with block"]

    def create(topic: str) -> None:
        try:
            P.apply_delta("born-together", [{"type": "ADD", "content": topic}])
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(t,)) for t in topics]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with read_session() as s:
        versions = s.exec(PlaybookVersion.__table__.select().where(  # type: ignore[attr-defined]
            PlaybookVersion.playbook_id == "born-together")).all()
    assert sorted(v.number for v in versions) == list(range(7))  # version 0 once, then one per delta
    assert sorted(b.id for b in P.active_bullets("born-together")) == [f"b-{n:05d}" for n in range(1, 7)]


@pytest.mark.both_dbs
def test_near_duplicates_are_found_alike_on_both_databases(db_url: str, fresh_retrieval: None) -> None:
    """Dedup inside a write ranks candidates in the database (FTS5, or PostgreSQL's full-text search) when
    this process has no index at the playbook's version: another process wrote last."""
    from core import retrieval

    P.apply_delta("dups", [{"type": "ADD", "content": "Guard against an empty list before dividing by its length"},
                           {"type": "ADD", "content": "Parse dates with datetime.fromisoformat, not by hand"}])
    outcomes = []
    for content in ("Guard against an empty list before dividing by its length.",  # a near copy
                    "Parse dates with datetime.fromisoformat instead of by hand",  # a light rewording
                    "Cache results of pure functions with functools.lru_cache"):  # new
        retrieval.clear_cache()  # as in a process that did not make the last write
        res = P.apply_delta("dups", [{"type": "ADD", "content": content}])
        outcomes.append((res.results[0].type, res.results[0].bullet_id))
    assert outcomes == [("TAG", "b-00001"), ("TAG", "b-00002"), ("ADD", "b-00003")]
    assert [b.helpful for b in P.active_bullets("dups")] == [1, 1, 0]


@pytest.mark.both_dbs
def test_trace_events_from_two_writers_keep_one_sequence(db_url: str) -> None:
    from core.episodes.trace import Trace
    from core.loop import create_episode

    ep = create_episode(TaskSpec(task="t", mode="sandbox_only", code="print(1)"))

    def emit(n: int) -> None:
        tr = Trace(ep.id)  # each its own lock, as two processes would be
        for i in range(20):
            tr.emit("error", {"step": "worker", "message": f"{n}-{i}"})

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with read_session() as s:
        seqs = [e.seq for e in s.exec(Event.__table__.select().where(Event.episode_id == ep.id))]  # type: ignore[attr-defined]
    assert sorted(seqs) == list(range(1, 61))


# ------------------------------------------------------------------ workers


def _workers(n: int, *args: str) -> list[subprocess.Popen]:
    """`ace worker` processes; their first line says they are ready (the rest of their output is not read)."""
    return [subprocess.Popen([ACE, "worker", *args], env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


SLOW = "import time\ntime.sleep(0.4)\nprint('ran once')\n"


@pytest.mark.both_dbs
def test_two_workers_drain_one_queue_each_job_once(db_url: str) -> None:
    workers = _workers(2, "--poll", "0.1")
    try:
        for w in workers:  # both ready before the first job, or the first one up might drain them all
            assert w.stdout is not None and "waiting for jobs" in w.stdout.readline()
        ids = [submit_episode(TaskSpec(task=f"slow {i}", mode="sandbox_only", code=SLOW, playbook_id="q"))
               for i in range(8)]
        wait_for(lambda: all(jobs.get_job(j).status == "done" for _, j in ids), timeout=120,
                 message="the two workers did not drain the queue")
    finally:
        _stop(workers)
    done = [jobs.get_job(j) for _, j in ids]
    assert all(j.attempts == 1 for j in done)
    assert len({j.worker_id.split(":")[1] for j in done}) == 2  # both processes took jobs
    with read_session() as s:
        for ep_id, _ in ids:
            runs = [e for e in s.exec(Event.__table__.select().where(  # type: ignore[attr-defined]
                Event.episode_id == ep_id, Event.kind == "execute"))]
            assert len(runs) == 1 and s.get(Episode, ep_id).status == "succeeded"


def _listening(url: str) -> int:
    """Connections on this database that LISTEN for wake-ups (one per process that runs a worker)."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND application_name = 'ace-playground-listen'").fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_idle_worker_wakes_on_notify_not_on_its_poll(db_url: str) -> None:
    workers = _workers(1, "--poll", "30")
    try:
        wait_for(lambda: _listening(db_url) == 1, timeout=30, message="the worker never listened")
        time.sleep(0.5)  # past its first look at the (empty) queue: now it only waits
        t0 = time.monotonic()
        _, job_id = submit_episode(TaskSpec(task="wake", mode="sandbox_only", code="print('up')", playbook_id="w"))
        wait_for(lambda: jobs.get_job(job_id).status == "done", timeout=20,
                 message="the worker slept through the notification")
        assert time.monotonic() - t0 < 10  # far below the 30 s poll
    finally:
        _stop(workers)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_workers_survive_a_database_restart_and_lose_no_job(db_url: str, pg_server: ThrowawayPostgres) -> None:
    code = "import time\ntime.sleep(3)\nprint('survived')\n"
    workers = _workers(1, "--poll", "0.2")
    try:
        _, first = submit_episode(TaskSpec(task="in flight", mode="sandbox_only", code=code, playbook_id="r"))
        wait_for(lambda: jobs.get_job(first).status == "running", timeout=30, message="the job never started")
        db.dispose_engines()  # this test's own connections die with the server too
        pg_server.restart()
        _, second = submit_episode(TaskSpec(task="after", mode="sandbox_only", code="print(2)", playbook_id="r"))
        wait_for(lambda: all(jobs.get_job(j).status in ("done", "failed") for j in (first, second)), timeout=90,
                 message="the jobs never ended after the restart")
        assert workers[0].poll() is None  # the worker process carried on
    finally:
        _stop(workers)
    for j in (first, second):
        job = jobs.get_job(j)
        assert job.status == "done", (job.status, job.error)
    with read_session() as s:
        assert [e.status for e in s.exec(Episode.__table__.select().where(  # type: ignore[attr-defined]
            Episode.playbook_id == "r"))] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_busy_process_stays_within_its_connection_budget(db_url: str) -> None:
    """Pool plus overflow plus the listener: 8 connections by default, so 8 workers, 2 services and the
    app (11 processes) fit PostgreSQL's default max_connections of 100."""
    settings = config.get_settings()
    budget = settings.db_pool_size + settings.db_max_overflow + 1
    assert 11 * budget <= 100
    waiter = wakeups.waiter(db.get_engine(), wakeups.JOBS)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _connections(db_url))
            time.sleep(0.02)

    def write(n: int) -> None:
        for _ in range(10):
            words = " ".join(uuid.uuid4().hex for _ in range(4))  # unlike any other bullet: never deduplicated
            P.apply_delta(f"busy-{n % 3}", [{"type": "ADD", "content": words}])

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    waiter.close()
    assert 2 <= peak <= budget
    assert sum(len(P.active_bullets(f"busy-{n}")) for n in range(3)) == 240


def _connections(url: str) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND application_name LIKE 'ace-playground%'").fetchone()[0])  # type: ignore[index]


@pytest.mark.both_dbs
def test_a_job_finished_by_a_worker_that_lost_it_is_not_overwritten(db_url: str) -> None:
    """A worker judged stale (but only slow) must not end the run another worker took over."""
    job_id = jobs.enqueue("noop", {})
    first = jobs.claim("slow-worker", ["noop"])
    jobs.recover_stale(stale_after_s=0)  # its heartbeat looks stale: queued again
    second = jobs.claim("other-worker", ["noop"])
    assert first is not None and second is not None and second.attempts == 2
    assert jobs.finish(job_id, "failed", error="late", attempt=first.attempts) is False
    assert jobs.finish(job_id, "done", attempt=second.attempts) is True
    with read_session() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.worker_id) == ("done", "other-worker")


@pytest.mark.both_dbs
def test_nul_from_a_program_is_stored_replaced(db_url: str) -> None:
    """PostgreSQL cannot store NUL in text; a program's output holding one is kept, with U+FFFD."""
    from core.loop import run_episode

    res = run_episode(TaskSpec(task="nul", mode="sandbox_only", code="print('a\\x00b')", playbook_id="n"))
    with read_session() as s:
        outs = [e.payload for e in s.exec(Event.__table__.select().where(  # type: ignore[attr-defined]
            Event.episode_id == res.episode_id, Event.kind == "execute"))]
    assert outs and "a\ufffdb" in str(outs[0]) and "\x00" not in str(outs[0])


def test_the_database_password_is_a_secret(settings_env) -> None:  # type: ignore[no-untyped-def]
    """A team's ACE_DB_URL holds a password: settings show it masked, and redaction treats it as a key."""
    from core.redaction import redact, scrub_for_storage

    s = settings_env(ACE_DB_URL="postgresql://ace:a-long-database-password-42@db.internal:5432/ace")
    assert s.public()["db_url"] == "postgresql://ace:***@db.internal:5432/ace"
    echoed = 'connection to "postgresql://ace:a-long-database-password-42@db.internal" failed'
    assert "a-long-database-password-42" not in redact(echoed)
    assert "a-long-database-password-42" not in scrub_for_storage(echoed)
    assert db.shown_url(s.db_url).endswith("://ace:***@db.internal:5432/ace")  # what `ace worker` prints


@pytest.mark.both_dbs
def test_work_after_a_write_runs_once_its_connection_is_back(db_url: str) -> None:
    """Embedding after a write opens connections of its own: it must not run while the write still holds one
    (writers filling the pool would each wait for a second connection)."""
    engine = db.get_engine()
    seen: list[object] = []
    with db.write_session() as s:
        s.connection()
        db.after_session(s, lambda: seen.append(engine.pool.checkedout()))  # type: ignore[attr-defined]
        assert seen == []
    assert seen == [0]
    with pytest.raises(RuntimeError), db.write_session() as s:
        db.after_session(s, lambda: seen.append("ran after a failed write"))
        raise RuntimeError("the write fails")
    assert seen == [0]
