"""LLM calls in full: finish reason, token cap, retry, round and cost per call; the output mode each endpoint
accepts, remembered across processes; ops a model proposed that were dropped before reaching a delta

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("llmcall") as batch:
        batch.add_column(sa.Column("finish_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("max_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("retry", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("round", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("delta") as batch:
        batch.add_column(sa.Column("dropped", sa.JSON(), nullable=True))
    op.create_table(
        "llmendpointmode",
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("mode", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "model"),
    )


def downgrade() -> None:
    op.drop_table("llmendpointmode")
    with op.batch_alter_table("delta") as batch:
        batch.drop_column("dropped")
    with op.batch_alter_table("llmcall") as batch:
        for name in ("cost", "round", "retry", "max_tokens", "finish_reason"):
            batch.drop_column(name)
