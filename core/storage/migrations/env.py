"""Alembic environment: runs on the connection core.storage.db hands over, or on ACE_DB_URL."""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import core.storage.models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from core.config import get_settings
    from core.storage.db import database_url

    engine = create_engine(database_url(context.config.get_main_option("sqlalchemy.url") or get_settings().db_url))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
