"""rater bench: repeat items (intra-rater agreement) and finding boxes (open a pair at its finding)

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A repeat is a second row of the same (rater, pair): the unique keys take the flag in.
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_repeat', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.drop_constraint('uq_assignments_rater_qa', type_='unique')
        batch_op.create_unique_constraint('uq_assignments_rater_qa', ['rater_id', 'qa_id', 'is_repeat'])
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_repeat', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.drop_constraint('uq_ratings_qa_rater', type_='unique')
        batch_op.create_unique_constraint('uq_ratings_qa_rater', ['qa_id', 'rater_id', 'is_repeat'])
    op.create_table('finding_boxes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('side', sa.String(length=16), nullable=True),
    sa.Column('location', sa.Text(), nullable=True),
    sa.Column('box', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_finding_boxes_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finding_boxes'))
    )
    with op.batch_alter_table('finding_boxes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_finding_boxes_scan_id'), ['scan_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('finding_boxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_finding_boxes_scan_id'))
    op.drop_table('finding_boxes')
    for table, key, columns in (('ratings', 'uq_ratings_qa_rater', ['qa_id', 'rater_id']),
                                ('assignments', 'uq_assignments_rater_qa', ['rater_id', 'qa_id'])):
        op.execute(sa.text(f"DELETE FROM {table} WHERE is_repeat"))
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(key, type_='unique')
            batch_op.create_unique_constraint(key, columns)
            batch_op.drop_column('is_repeat')
