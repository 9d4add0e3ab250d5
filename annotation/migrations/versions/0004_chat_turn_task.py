"""chat turns keep their task and their encoding time

Revision ID: 0004
Revises: 0003
Why: a turn asked from a template (existence, temporal, ...) lost its task on a restart, so it
went to the rating queue as "chat"; and the wait before the first token was shown without the
time spent encoding the scan.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chat_turns') as batch:
        batch.add_column(sa.Column('task', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('encoding_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chat_turns') as batch:
        batch.drop_column('encoding_s')
        batch.drop_column('task')
