"""The hot write path (`row_writer`) must store exactly what the ORM would, and nothing on failure."""

from datetime import UTC

import pytest
from sqlmodel import func, select

from core.loop import TaskSpec, create_episode
from core.storage import db
from core.storage.models import Episode, Event, LLMCall, utcnow
from tests.support import SQLITE_ONLY

pytestmark = SQLITE_ONLY  # the raw DBAPI write path and its errors exist only on SQLite


def test_row_writer_round_trips_types_the_orm_reads(db_url: str) -> None:
    ep = create_episode(TaskSpec(task="t", playbook_id="p"))
    when = utcnow()
    with db.row_writer() as w:
        w.insert(Event.__table__, [{"episode_id": ep.id, "seq": 1, "kind": "route", "attempt": None,
                                    "payload": {"a": [1, "é", None], "b": {"c": 1.5}}, "started_at": when,
                                    "duration_ms": 2.5}])
        w.add([LLMCall(episode_id=ep.id, role="generator", model="m", messages=[{"role": "user", "content": "x"}],
                       response="r", prompt_tokens=3, completion_tokens=4, latency_ms=1.0, mode="json_schema")])
        assert w.update(Episode.__table__, {"id": ep.id}, {"success": True, "finished_at": when, "tokens": 7}) == 1
    with db.read_session() as s:
        ev = s.exec(select(Event).where(Event.episode_id == ep.id)).one()
        got = s.get(Episode, ep.id)
        call = s.exec(select(LLMCall).where(LLMCall.episode_id == ep.id)).one()
    assert ev.payload == {"a": [1, "é", None], "b": {"c": 1.5}} and ev.started_at == when
    assert ev.started_at.tzinfo is not None and ev.started_at.utcoffset() == UTC.utcoffset(None)
    assert got.success is True and got.finished_at == when and got.tokens == 7
    assert call.messages == [{"role": "user", "content": "x"}] and call.prompt_tokens == 3
    # stored exactly as the ORM stores it (SQLite text without a zone), so SQL comparisons and sorts agree
    raw = db.get_engine().raw_connection()
    try:
        stored = raw.execute("SELECT started_at FROM event WHERE episode_id = ?", (ep.id,)).fetchone()[0]
        orm_stored = raw.execute("SELECT created_at FROM playbook WHERE id = 'p'").fetchone()[0]
    finally:
        raw.close()
    assert stored == when.strftime("%Y-%m-%d %H:%M:%S.%f") and len(stored) == len(orm_stored)


def test_row_writer_stores_json_none_as_the_orm_does(db_url: str) -> None:
    from core.storage.models import Job

    with db.write_session() as s:
        s.add(Job(id="orm", kind="x", payload={}, result=None))
    with db.row_writer() as w:
        w.add([Job(id="plain", kind="x", payload={}, result=None)])
    raw = db.get_engine().raw_connection()
    try:
        got = dict(raw.execute("SELECT id, result FROM job").fetchall())
    finally:
        raw.close()
    assert got["plain"] == got["orm"]


def test_row_writer_rolls_back_everything_on_error(db_url: str) -> None:
    ep = create_episode(TaskSpec(task="t", playbook_id="p"))
    with pytest.raises(RuntimeError), db.row_writer() as w:
        w.insert(Event.__table__, [{"episode_id": ep.id, "seq": 1, "kind": "route", "payload": {},
                                    "started_at": utcnow()}])
        w.update(Episode.__table__, {"id": ep.id}, {"status": "running"})
        raise RuntimeError("crash mid-write")
    with db.read_session() as s:
        assert s.exec(select(func.count()).select_from(Event).where(Event.episode_id == ep.id)).one() == 0
        assert s.get(Episode, ep.id).status == "queued"


def test_row_writer_refuses_naive_datetimes_and_unknown_columns(db_url: str) -> None:
    ep = create_episode(TaskSpec(task="t", playbook_id="p"))
    from datetime import datetime

    with pytest.raises(ValueError, match="naive"), db.row_writer() as w:
        w.update(Episode.__table__, {"id": ep.id}, {"finished_at": datetime(2026, 1, 1)})
    with pytest.raises(KeyError), db.row_writer() as w:
        w.update(Episode.__table__, {"id": ep.id}, {"no_such_column": 1})


def test_plain_statements_raise_the_orms_exceptions(db_url: str) -> None:
    """Callers and the service's handlers (503 for a busy or full database) catch SQLAlchemy's errors."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    from core.storage.models import Job

    with db.row_writer() as w:
        w.add([Job(id="j1", kind="x", payload={})])
    with pytest.raises(IntegrityError), db.row_writer() as w:
        w.add([Job(id="j1", kind="x", payload={})])
    with pytest.raises(OperationalError, match="no such table"):
        db.query_row("SELECT 1 FROM no_such_table")
    with db.write_session() as s, pytest.raises(OperationalError):
        db.connection_writer(s.connection()).rows("SELECT nothing FROM job")
