"""PostgreSQL's counterparts of what SQLite does alone: wake-ups and full-text search

On PostgreSQL, triggers notify `ace_jobs` when a job becomes queued and `ace_cancel` (payload: the job id)
when someone asks to cancel a running job, so idle workers and running jobs on any host hear of it at once
(core.storage.wakeups). A GIN index over the bullets' text is what FTS5 is on SQLite: dedup inside a
write ranks its candidates there (core.retrieval.fts). Nothing changes on SQLite.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The text the index covers; a query must use the same expression to use the index.
BULLET_TSV = "to_tsvector('english', content || ' ' || section)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE INDEX ix_bullet_tsv ON bullet USING gin ({BULLET_TSV})")
    op.execute("""
        CREATE FUNCTION ace_job_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued') THEN
            PERFORM pg_notify('ace_jobs', NEW.kind);
          END IF;
          IF TG_OP = 'UPDATE' AND NEW.cancel_requested AND NOT OLD.cancel_requested THEN
            PERFORM pg_notify('ace_cancel', NEW.id);
          END IF;
          RETURN NULL;
        END $$""")
    op.execute("CREATE TRIGGER job_notify AFTER INSERT OR UPDATE ON job "
               "FOR EACH ROW EXECUTE FUNCTION ace_job_notify()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS job_notify ON job")
    op.execute("DROP FUNCTION IF EXISTS ace_job_notify()")
    op.execute("DROP INDEX IF EXISTS ix_bullet_tsv")
