from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from core.storage import db


def test_empty_database_upgrades_to_head(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'blank.db'}")
    db._install_sqlite_hooks(engine)
    db.upgrade(engine)
    names = set(inspect(engine).get_table_names())
    assert {"playbook", "bullet", "bulletrevision", "playbookversion", "delta", "deltaop", "episode",
            "event", "reflection", "llmcall", "job", "bullet_fts"} <= names
    cols = {c["name"] for c in inspect(engine).get_columns("bullet")}
    assert {"id", "playbook_id", "section", "content", "helpful", "harmful", "neutral", "status",
            "source_episode_id", "created_at", "updated_at"} <= cols
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.BUSY_TIMEOUT_MS
    db.upgrade(engine)  # idempotent
    engine.dispose()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'round.db'}")
    db._install_sqlite_hooks(engine)
    db.upgrade(engine)
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "bullet" not in inspect(engine).get_table_names()
    db.upgrade(engine)
    assert "bullet" in inspect(engine).get_table_names()
    engine.dispose()


def test_models_match_the_migrations(tmp_path: Path) -> None:
    """Every table change must come with a migration: autogenerate finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import core.storage.models  # noqa: F401

    engine = create_engine(f"sqlite:///{tmp_path / 'cmp.db'}")
    db._install_sqlite_hooks(engine)
    db.upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    diffs = [d for d in diffs if not (d[0] == "remove_table" and d[1].name.startswith("bullet_fts"))]
    assert diffs == []
    engine.dispose()
