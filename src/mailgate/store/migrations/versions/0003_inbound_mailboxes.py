"""inbound mailboxes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Domains, mailboxes, aliases, folders with IMAP UIDs, stored mail (content sealed) and its blind
search index.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('domains',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('catch_all', sa.String(length=32), nullable=True),
    sa.Column('spam_tag', sa.Float(), nullable=True),
    sa.Column('spam_junk', sa.Float(), nullable=True),
    sa.Column('spam_reject', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_domains_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_domains')),
    sa.UniqueConstraint('name', name=op.f('uq_domains_name'))
    )
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_domains_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('mailboxes',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('domain_id', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.LargeBinary(), nullable=True),
    sa.Column('settings', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_mailboxes_domain_id_domains'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_mailboxes_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mailboxes')),
    sa.UniqueConstraint('address', name=op.f('uq_mailboxes_address'))
    )
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailboxes_domain_id'), ['domain_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mailboxes_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('aliases',
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('mailbox_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_aliases_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_aliases'))
    )
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_aliases_mailbox_id'), ['mailbox_id'], unique=False)

    op.create_table('folders',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('mailbox_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('special_use', sa.String(length=20), nullable=True),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('uidnext', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_folders_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_folders')),
    sa.UniqueConstraint('mailbox_id', 'name', name=op.f('uq_folders_mailbox_id_name'))
    )
    op.create_table('mail',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('mailbox_id', sa.String(length=32), nullable=False),
    sa.Column('folder_id', sa.String(length=32), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('blob_id', sa.String(length=64), nullable=False),
    sa.Column('record', sa.LargeBinary(), nullable=False),
    sa.Column('thread_id', sa.String(length=32), nullable=False),
    sa.Column('message_key', sa.String(length=20), nullable=True),
    sa.Column('subject_key', sa.String(length=20), nullable=True),
    sa.Column('has_attachments', sa.Boolean(), nullable=False),
    sa.Column('spam_score', sa.Float(), nullable=False),
    sa.Column('seen', sa.Boolean(), nullable=False),
    sa.Column('flagged', sa.Boolean(), nullable=False),
    sa.Column('answered', sa.Boolean(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('draft', sa.Boolean(), nullable=False),
    sa.Column('keywords', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['folder_id'], ['folders.id'], name=op.f('fk_mail_folder_id_folders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_mail_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_mail_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mail')),
    sa.UniqueConstraint('folder_id', 'uid', name=op.f('uq_mail_folder_id_uid'))
    )
    with op.batch_alter_table('mail', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mail_blob_id'), ['blob_id'], unique=False)
        batch_op.create_index('ix_mail_mailbox_id_message_key', ['mailbox_id', 'message_key'], unique=False)
        batch_op.create_index('ix_mail_mailbox_id_received_at', ['mailbox_id', 'received_at'], unique=False)
        batch_op.create_index('ix_mail_mailbox_id_thread_id', ['mailbox_id', 'thread_id'], unique=False)

    op.create_table('mail_terms',
    sa.Column('term', sa.String(length=20), nullable=False),
    sa.Column('mail_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['mail_id'], ['mail.id'], name=op.f('fk_mail_terms_mail_id_mail'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('term', 'mail_id', name=op.f('pk_mail_terms')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('mail_terms', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mail_terms_mail_id'), ['mail_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('mail_terms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mail_terms_mail_id'))

    op.drop_table('mail_terms')
    with op.batch_alter_table('mail', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_mailbox_id_thread_id')
        batch_op.drop_index('ix_mail_mailbox_id_received_at')
        batch_op.drop_index('ix_mail_mailbox_id_message_key')
        batch_op.drop_index(batch_op.f('ix_mail_blob_id'))

    op.drop_table('mail')
    op.drop_table('folders')
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_aliases_mailbox_id'))

    op.drop_table('aliases')
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mailboxes_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_mailboxes_domain_id'))

    op.drop_table('mailboxes')
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_domains_tenant_id'))

    op.drop_table('domains')
