"""Re-runs: an episode remembers the one it was re-run from, and which workflow it ran

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episode") as batch:
        batch.add_column(sa.Column("rerun_of", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("workflow", sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                   server_default="single"))
        batch.create_index("ix_episode_rerun_of", ["rerun_of"])


def downgrade() -> None:
    with op.batch_alter_table("episode") as batch:
        batch.drop_index("ix_episode_rerun_of")
        batch.drop_column("workflow")
        batch.drop_column("rerun_of")
