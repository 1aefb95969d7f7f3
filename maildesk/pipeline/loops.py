"""Loop and bounce safety: which inbound mail may get an automatic reply (RFC 3834).

Mail that is itself automatic, bulk, from a list, from a mail system, or a
bounce of any format is recorded but never answered; answering it is how
mail loops start.
"""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.message import ParsedMessage

_SYSTEM_SENDERS = ("mailer-daemon", "postmaster")
# "auto_reply": vacation programs that predate RFC 3834 (cPanel, Exim's) say so here.
_BULK = ("bulk", "junk", "list", "auto_reply")


@dataclass(frozen=True)
class Verdict:
    is_bounce: bool
    # Empty when an automatic reply is allowed, else why not.
    no_reply_reason: str

    @property
    def may_reply(self) -> bool:
        return not self.no_reply_reason


def classify(message: ParsedMessage, envelope_sender: str) -> Verdict:
    local = message.from_addr.partition("@")[0]
    # "<>" is the null reverse-path; "" means the route did not say (import).
    null_sender = envelope_sender == "<>"
    system_sender = local in _SYSTEM_SENDERS
    automatic = message.auto_submitted not in ("", "no")
    # A DSN is a bounce by its form. Bounce text the detectors found in a plain message is
    # one only when a mail system sent it: a person who forwards a bounce they got (quoting
    # its "could not be delivered" text) is writing to us.
    bounce = message.is_delivery_report or (
        bool(message.bounced_recipients | message.delayed_recipients)
        and (null_sender or system_sender or automatic)
    )
    reasons = [
        (bounce, "bounce"),
        (null_sender, "null envelope sender"),
        (system_sender, f"sender is {local}"),
        (automatic, f"Auto-Submitted: {message.auto_submitted}"),
        (message.precedence in _BULK, f"Precedence: {message.precedence}"),
        (bool(message.list_id), "List-Id present"),
        # As RFC 5230 (Sieve vacation) advises: any RFC 2369 List-* field means a list.
        (bool(message.list_fields), f"{', '.join(message.list_fields)} present"),
        # Auto-responders and other help desks that write no Auto-Submitted mark their
        # answers so; without this, one and we answered each other at the caps' pace.
        (bool(message.auto_fields), f"{', '.join(message.auto_fields)} present"),
    ]
    reason = next((why for hit, why in reasons if hit), "")
    return Verdict(is_bounce=bounce, no_reply_reason=reason)
