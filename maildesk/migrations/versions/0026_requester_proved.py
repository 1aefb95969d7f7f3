"""tickets.sender_proven: also set when the requester's own mail proved her since

A ticket that unproven mail opened in someone's name became hers (its words
repeated in our mail to her, the ticket shown to her organization) once any
customer's mail in it carried a proof, read by an EXISTS over its messages at
each look. A participant's mail counted too: whoever holds the ticket's reply
address may write her From above it, or none. The processor now sets
`sender_proven` when the mail proves the requester herself
(`trust.proves_requester`); existing tickets get it here from mail with a proof
written From the requester's address (which cannot tell her from a participant
writing her From: they stay as they were read).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-03
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE tickets SET sender_proven = TRUE
        WHERE sender_proven = FALSE AND EXISTS (
            SELECT 1 FROM messages JOIN people ON people.id = tickets.requester_id
            WHERE messages.ticket_id = tickets.id
              AND messages.kind = 'customer'
              AND messages.direction = 'in'
              AND messages.proof != ''
              AND lower(messages.from_addr) = people.email
        )
        """
    )


def downgrade() -> None:
    """Nothing to undo: a proven ticket was read as proven before this revision too."""
