"""Bullets built straight from their column values, without ORM loading.

Retrieval returns bullets from a per-version cache, and the playbook's writes
hand the rows they commit to that cache; both need Bullet objects that no
session tracks and that cost no query to build.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import configure_mappers, instrumentation, make_transient_to_detached
from sqlmodel import select

from core.storage.models import Bullet

BULLET_TABLE = Bullet.__table__  # type: ignore[attr-defined]
BULLET_COLUMNS = [c.name for c in BULLET_TABLE.columns]


def _new_bullet() -> Bullet:
    """An empty Bullet instance with its ORM state, as a query would make it (no __init__ validation)."""
    configure_mappers()
    return instrumentation.manager_of_class(Bullet).new_instance()


def _detached(values: Sequence[Any]) -> Bullet:
    """A detached Bullet from its column values in table order, as a query would build it
    (no ORM loading, nothing for a session to track)."""
    b = _new_bullet()
    b.__dict__.update(zip(BULLET_COLUMNS, values))
    make_transient_to_detached(b)
    return b


def bullets_where(conn: Connection, *criteria: Any) -> list[Bullet]:
    """Bullets matching Core `criteria`, detached; each column still goes through its type."""
    return [_detached(r) for r in conn.execute(select(BULLET_TABLE).where(*criteria))]


def detached_copy(b: Bullet) -> Bullet:
    """A detached copy of `b`'s column values: safe to share in a cache."""
    return _detached([getattr(b, name) for name in BULLET_COLUMNS])
