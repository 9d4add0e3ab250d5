"""scans keep their calibration: rescale slope/intercept and orientation (CT-RATE metadata)

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("rescale_slope", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rescale_intercept", sa.Float(), nullable=True))
        batch.add_column(sa.Column("orientation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("orientation")
        batch.drop_column("rescale_intercept")
        batch.drop_column("rescale_slope")
