"""bullet embeddings: one vector per (bullet, embedding model), plus its source task's vector

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulletembedding",
        sa.Column("eid", sa.Integer(), nullable=False),
        sa.Column("bullet_pk", sa.Integer(), nullable=False),
        sa.Column("playbook_id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("task_vector", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["bullet_pk"], ["bullet.pk"]),
        sa.ForeignKeyConstraint(["playbook_id"], ["playbook.id"]),
        sa.PrimaryKeyConstraint("eid"),
        sa.UniqueConstraint("bullet_pk", "model", name="uq_embedding_bullet_model"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_embedding_playbook_model", "bulletembedding", ["playbook_id", "model", "eid"])


def downgrade() -> None:
    op.drop_index("ix_embedding_playbook_model", table_name="bulletembedding")
    op.drop_table("bulletembedding")
