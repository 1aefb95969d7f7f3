"""What a customer's message may do in the ticket it joins, from what proves its sender.

- A secret — our signed reply address of this ticket, or a Message-ID maildesk
  minted for it — proves the sender received our mail about this ticket.
- A proven From (aligned DKIM, or our MTA's verdict: maildesk/mailauth.py) of
  someone who already takes part in the ticket (its requester or a participant), or
  who wrote the mail that the reply which opened the ticket answered, To her: she
  copied someone who answered everyone before her own mail reached us, and she
  becomes the requester (pipeline/process.py).
- An archive imported by the operator (`maildesk import`) is vouched for by them.
A verified message may add its sender and the people it copies as participants,
approve or decline paid work, confirm, dispute, reopen. An unverified one changes
nothing and adds no one: its text joins the ticket it names, marked for the agents
(never dropped, and a customer who only forgot to quote still reaches the agents).
A new ticket belongs to whoever opened it; only a proven sender's Cc join it. A From
proven by a signature acts only where the signature covers the fields that named the
ticket, and copies in only a Cc it covers (mailauth.py).

A secret proves that someone we wrote to about the ticket wrote, not which of them:
every participant holds the ticket's reply address, and may write the requester's
From above it, or anyone's. What is the writer's own word (their display name, which
may rename them) and what is the requester's alone (answering paid work, proving a
ticket that unproven mail opened in her name hers) need a proof of the writer
(`Standing.names_writer`), or a ticket nobody but its requester takes part in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from maildesk.mailauth import Authentication
from maildesk.pipeline.threader import Match

UNVERIFIED_FLAG = "unverified"


@dataclass(frozen=True)
class Standing:
    proof: str  # stored on the message; "" = unverified
    # The people the message copies (Cc) may join the ticket: what proves the sender
    # proves the Cc too. A secret or an import does; a signature only if it covers it.
    copies: bool = False
    # The proof is of the writer's own address, not only a secret that everyone we wrote
    # to about the ticket holds: her From's signature, the portal's login, an import.
    names_writer: bool = False

    @property
    def verified(self) -> bool:
        return bool(self.proof)


def proves_writer(
    trust: Standing, sender: str, requester: str, others_take_part: Callable[[], bool]
) -> bool:
    """Whether the mail is its From's own word: that From proven as the writer's
    (`Standing.names_writer`), or the requester's From under a secret of a ticket that
    nobody else takes part in (`others_take_part`, asked only then). Only such mail
    renames its sender, or proves a ticket its requester's."""
    if not trust.verified:
        return False
    if trust.names_writer:
        return True
    return sender.lower() == requester.lower() and not others_take_part()


def proves_requester(
    trust: Standing, sender: str, requester: str, others_take_part: Callable[[], bool]
) -> bool:
    """Whether the mail is the requester's own word, for what is hers alone (answering paid
    work, proving a ticket hers)."""
    return sender.lower() == requester.lower() and proves_writer(
        trust, sender, requester, others_take_part
    )


def standing(match: Match, auth: Authentication, source: str, takes_part: bool) -> Standing:
    """`takes_part`: the sender is the matched ticket's requester or a participant, or
    wrote the mail that the ticket's first message answered."""
    if source == "import":
        return Standing("import", copies=True, names_writer=True)
    if match.ticket is not None and match.secret:
        proof = "reply_token" if match.rule == "reply_token" else "message_id"
        # The portal writes the From of whoever logged in (web/portal.py).
        return Standing(proof, True, names_writer=auth.proven or source == "web")
    # The proof must cover the fields that named the ticket: a replayed mail of a
    # participant's, with a References of someone else's choosing, acts on no ticket.
    if auth.proven and (match.ticket is None or (takes_part and match.named_under(auth))):
        return Standing(auth.method, copies=auth.vouches_for("cc"), names_writer=True)
    return Standing("")
