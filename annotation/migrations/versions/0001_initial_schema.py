"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 06:56:34.727827
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('filter', sa.JSON(), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exports'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('base_version_id', sa.Integer(), nullable=True),
    sa.Column('provenance', sa.JSON(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('default', 'finetuned', 'external')", name=op.f('ck_model_versions_kind')),
    sa.ForeignKeyConstraint(['base_version_id'], ['model_versions.id'], name=op.f('fk_model_versions_base_version_id_model_versions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('name', name=op.f('uq_model_versions_name'))
    )
    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('split', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('name', name=op.f('uq_patients_name'))
    )
    op.create_table('raters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('human', 'model')", name=op.f('ck_raters_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_raters')),
    sa.UniqueConstraint('name', name=op.f('uq_raters_name'))
    )
    op.create_table('finetune_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('qa_ids', sa.JSON(), nullable=True),
    sa.Column('filter', sa.JSON(), nullable=True),
    sa.Column('base', sa.Text(), nullable=True),
    sa.Column('output_path', sa.Text(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed', 'cancelled')", name=op.f('ck_finetune_runs_status')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_finetune_runs_model_version_id_model_versions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finetune_runs'))
    )
    op.create_table('scans',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('volume_name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('timepoint', sa.String(length=8), nullable=True),
    sa.Column('reconstruction', sa.Integer(), nullable=True),
    sa.Column('study_date', sa.String(length=10), nullable=True),
    sa.Column('spacing', sa.JSON(), nullable=True),
    sa.Column('shape', sa.JSON(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('split', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('reconstruction IS NULL OR reconstruction >= 0', name=op.f('ck_scans_reconstruction')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_scans_patient_id_patients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scans')),
    sa.UniqueConstraint('volume_name', name=op.f('uq_scans_volume_name'))
    )
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scans_patient_id'), ['patient_id'], unique=False)

    op.create_table('chat_turns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.String(length=64), nullable=False),
    sa.Column('turn_index', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('choices', sa.JSON(), nullable=True),
    sa.Column('choice', sa.String(length=1), nullable=True),
    sa.Column('choice_scores', sa.JSON(), nullable=True),
    sa.Column('box', sa.JSON(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('latency_first_token_s', sa.Float(), nullable=True),
    sa.Column('total_s', sa.Float(), nullable=True),
    sa.Column('n_tokens', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('turn_index >= 0', name=op.f('ck_chat_turns_turn_index_nonneg')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_chat_turns_model_version_id_model_versions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_chat_turns_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_turns')),
    sa.UniqueConstraint('conversation_id', 'turn_index', name='uq_chat_turns_conversation_turn')
    )
    with op.batch_alter_table('chat_turns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_turns_scan_id'), ['scan_id'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.CheckConstraint('value IN (0, 1)', name=op.f('ck_labels_value_binary')),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_labels_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels')),
    sa.UniqueConstraint('scan_id', 'name', name='uq_labels_scan_name')
    )
    op.create_table('qa_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('task_number', sa.Integer(), nullable=True),
    sa.Column('subtask', sa.String(length=64), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('question_type', sa.String(length=8), nullable=False),
    sa.Column('choice_a', sa.Text(), nullable=True),
    sa.Column('choice_b', sa.Text(), nullable=True),
    sa.Column('choice_c', sa.Text(), nullable=True),
    sa.Column('choice_d', sa.Text(), nullable=True),
    sa.Column('answer_choice', sa.String(length=1), nullable=True),
    sa.Column('priors', sa.JSON(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=True),
    sa.Column('content_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("answer_choice IS NULL OR answer_choice IN ('A', 'B', 'C', 'D')", name=op.f('ck_qa_pairs_answer_choice')),
    sa.CheckConstraint("question_type IN ('open', 'closed')", name=op.f('ck_qa_pairs_question_type')),
    sa.CheckConstraint("source IN ('imported', 'template', 'generated', 'chat')", name=op.f('ck_qa_pairs_source')),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_qa_pairs_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_qa_pairs')),
    sa.UniqueConstraint('content_key', name=op.f('uq_qa_pairs_content_key'))
    )
    with op.batch_alter_table('qa_pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_qa_pairs_scan_id'), ['scan_id'], unique=False)
        batch_op.create_index('ix_qa_pairs_task_source', ['task', 'source'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('clinical_information', sa.Text(), nullable=True),
    sa.Column('technique', sa.Text(), nullable=True),
    sa.Column('findings', sa.Text(), nullable=True),
    sa.Column('impressions', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_reports_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('scan_id', name=op.f('uq_reports_scan_id'))
    )
    op.create_table('assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('qa_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('batch', sa.String(length=64), nullable=False),
    sa.Column('shared', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('position >= 0', name=op.f('ck_assignments_position_nonneg')),
    sa.ForeignKeyConstraint(['qa_id'], ['qa_pairs.id'], name=op.f('fk_assignments_qa_id_qa_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_assignments_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assignments')),
    sa.UniqueConstraint('rater_id', 'qa_id', name='uq_assignments_rater_qa')
    )
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assignments_qa_id'), ['qa_id'], unique=False)

    op.create_table('ratings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('qa_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('visual_verifiability', sa.Integer(), nullable=True),
    sa.Column('specificity_clarity', sa.Integer(), nullable=True),
    sa.Column('answer_appropriateness', sa.Integer(), nullable=True),
    sa.Column('qa_alignment', sa.Integer(), nullable=True),
    sa.Column('linguistic_quality', sa.Integer(), nullable=True),
    sa.Column('consistent', sa.Boolean(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('seconds_spent', sa.Float(), nullable=False),
    sa.CheckConstraint("status <> 'rated' OR (visual_verifiability IS NOT NULL AND specificity_clarity IS NOT NULL AND answer_appropriateness IS NOT NULL AND qa_alignment IS NOT NULL AND linguistic_quality IS NOT NULL AND consistent IS NOT NULL)", name=op.f('ck_ratings_rated_complete')),
    sa.CheckConstraint("status IN ('rated', 'skipped', 'flagged')", name=op.f('ck_ratings_status')),
    sa.CheckConstraint('answer_appropriateness IS NULL OR (answer_appropriateness >= 0 AND answer_appropriateness <= 5)', name=op.f('ck_ratings_answer_appropriateness_range')),
    sa.CheckConstraint('linguistic_quality IS NULL OR (linguistic_quality >= 0 AND linguistic_quality <= 5)', name=op.f('ck_ratings_linguistic_quality_range')),
    sa.CheckConstraint('qa_alignment IS NULL OR (qa_alignment >= 0 AND qa_alignment <= 5)', name=op.f('ck_ratings_qa_alignment_range')),
    sa.CheckConstraint('seconds_spent >= 0', name=op.f('ck_ratings_seconds_nonneg')),
    sa.CheckConstraint('specificity_clarity IS NULL OR (specificity_clarity >= 0 AND specificity_clarity <= 5)', name=op.f('ck_ratings_specificity_clarity_range')),
    sa.CheckConstraint('visual_verifiability IS NULL OR (visual_verifiability >= 0 AND visual_verifiability <= 5)', name=op.f('ck_ratings_visual_verifiability_range')),
    sa.ForeignKeyConstraint(['qa_id'], ['qa_pairs.id'], name=op.f('fk_ratings_qa_id_qa_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_ratings_rater_id_raters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ratings')),
    sa.UniqueConstraint('qa_id', 'rater_id', name='uq_ratings_qa_rater')
    )
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ratings_rater_id'), ['rater_id'], unique=False)

    op.create_table('rating_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rating_id', sa.Integer(), nullable=False),
    sa.Column('qa_id', sa.Integer(), nullable=False),
    sa.Column('rater_id', sa.Integer(), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('visual_verifiability', sa.Integer(), nullable=True),
    sa.Column('specificity_clarity', sa.Integer(), nullable=True),
    sa.Column('answer_appropriateness', sa.Integer(), nullable=True),
    sa.Column('qa_alignment', sa.Integer(), nullable=True),
    sa.Column('linguistic_quality', sa.Integer(), nullable=True),
    sa.Column('consistent', sa.Boolean(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('seconds_spent', sa.Float(), nullable=False),
    sa.CheckConstraint('answer_appropriateness IS NULL OR (answer_appropriateness >= 0 AND answer_appropriateness <= 5)', name=op.f('ck_rating_history_answer_appropriateness_range')),
    sa.CheckConstraint('linguistic_quality IS NULL OR (linguistic_quality >= 0 AND linguistic_quality <= 5)', name=op.f('ck_rating_history_linguistic_quality_range')),
    sa.CheckConstraint('qa_alignment IS NULL OR (qa_alignment >= 0 AND qa_alignment <= 5)', name=op.f('ck_rating_history_qa_alignment_range')),
    sa.CheckConstraint('specificity_clarity IS NULL OR (specificity_clarity >= 0 AND specificity_clarity <= 5)', name=op.f('ck_rating_history_specificity_clarity_range')),
    sa.CheckConstraint('visual_verifiability IS NULL OR (visual_verifiability >= 0 AND visual_verifiability <= 5)', name=op.f('ck_rating_history_visual_verifiability_range')),
    sa.ForeignKeyConstraint(['qa_id'], ['qa_pairs.id'], name=op.f('fk_rating_history_qa_id_qa_pairs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], name=op.f('fk_rating_history_rater_id_raters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rating_id'], ['ratings.id'], name=op.f('fk_rating_history_rating_id_ratings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rating_history'))
    )
    with op.batch_alter_table('rating_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rating_history_rating_id'), ['rating_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rating_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rating_history_rating_id'))

    op.drop_table('rating_history')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ratings_rater_id'))

    op.drop_table('ratings')
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_assignments_qa_id'))

    op.drop_table('assignments')
    op.drop_table('reports')
    with op.batch_alter_table('qa_pairs', schema=None) as batch_op:
        batch_op.drop_index('ix_qa_pairs_task_source')
        batch_op.drop_index(batch_op.f('ix_qa_pairs_scan_id'))

    op.drop_table('qa_pairs')
    op.drop_table('labels')
    with op.batch_alter_table('chat_turns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_turns_scan_id'))

    op.drop_table('chat_turns')
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scans_patient_id'))

    op.drop_table('scans')
    op.drop_table('finetune_runs')
    op.drop_table('raters')
    op.drop_table('patients')
    op.drop_table('model_versions')
    op.drop_table('exports')
