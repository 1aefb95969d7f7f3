"""Which notification goes to whom, for each thing that happens to a ticket.

Customers get: the acknowledgement, the agent's reply, the paid-work notice,
and the resolved/closed notices. Agents get: new tickets and customer replies
(the owner and the ticket's watchers, or all agents while nobody owns the
ticket), critical alerts (all agents), a ticket a colleague gave them or took
from them, the answer to a paid-work notice, and errors in their commands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk import logs
from maildesk.accounts import Accounts
from maildesk.clock import as_utc, desk_time
from maildesk.config import LANGUAGES
from maildesk.message import ParsedMessage
from maildesk.models import Agent, Message, Person, Ticket
from maildesk.outbound.catalogue import (
    NO_MAIL,
    Acknowledgement,
    AgentBusy,
    AgentClosedAll,
    AgentError,
    AgentNotification,
    AgentQuiet,
    Invitation,
    NotAttached,
    PaidNotice,
    Quoted,
    StatusNotice,
    fitting,
)
from maildesk.outbound.compose import Attachment
from maildesk.outbound.notify import InReplyTo, Notifier, Recipient
from maildesk.pipeline import busy, quiet
from maildesk.pipeline.busy import Told
from maildesk.pipeline.quiet import Notice
from maildesk.redaction import LINK_SLACK, redact_head
from maildesk.states import NameSource
from maildesk.tickets.agents import Agents
from maildesk.tickets.cleanup import Flood
from maildesk.tickets.command_errors import CommandError
from maildesk.tickets.visibility import PUBLIC
from maildesk.tickets.watchers import Watchers
from maildesk.web.links import PaidLinks

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.notices")

# Characters of a mail an agent's notice quotes, and a #show of each message
# (console.py): a 20 MB text went whole into each agent's copy.
MAX_QUOTED = 20_000
# What a customer's mail meant that the ticket's hourly cap counts (`busy.py`), by
# whether it proved its sender: a plain reply, mail that proved nothing, and unproven
# mail From an agent's address (a warning each, until a stranger sends a loop of them).
# The rest change the ticket, and are told whatever the count.
COUNTED = {"reply": True, "unverified": False, "forged": False}


class Notices:
    def __init__(
        self,
        notifier: Notifier,
        links: PaidLinks,
        accounts: Callable[[Session], Accounts],
    ) -> None:
        self.notifier = notifier
        self.links = links
        self.accounts = accounts

    # -- to the customer -----------------------------------------------------

    def acknowledge(
        self, session: Session, ticket: Ticket, answering: InReplyTo | None, proven: bool = True
    ) -> int:
        """The acknowledgement; a person's first one offers an account.

        `proven`: the mail that opened the ticket proved its sender (pipeline/trust.py).
        Mail that did not may be anyone's, From the address of someone who never wrote:
        unless `[trust] echo_unproven`, the acknowledgement then repeats neither its
        subject nor its display name, so that a stranger cannot have our domain sign
        and send words of their choosing to any address (a spam relay)."""
        requester = ticket.requester
        offer = requester.password_hash is None and requester.invited_at is None
        withheld = not proven and not self.notifier.settings.trust.echo_unproven
        note = Acknowledgement(
            invitation_url=self.accounts(session).invitation_url(requester) if offer else "",
            has_account=requester.password_hash is not None,
            withheld=withheld,
        )
        to = Recipient.of_person(requester)
        if withheld and requester.name_source == NameSource.UNPROVEN:
            to = dataclasses.replace(to, name="")  # a name that mail without proof gave
        if withheld:
            # Its Message-ID and References are words too: "<Your.account.is.locked.
            # call.1-555-0100@…>" went back in In-Reply-To and References.
            answering = None
        self.notifier.notify(session, note, to, ticket=ticket, answering=answering)
        return 1

    def invitation(self, session: Session, person: Person) -> str:
        """Mail a fresh set-password link (older links stop working); returns it.

        In the person's language, else their latest ticket's, else the support language."""
        url = self.accounts(session).invitation_url(person)
        to = Recipient.of_person(person, mail_language(session, person))
        self.notifier.notify(session, Invitation(url), to)
        return url

    def status_notice(self, session: Session, ticket: Ticket) -> int:
        """Tell the customer where their ticket stands now.

        Resolved asks them to confirm or dispute; waiting asks for their reply;
        closed says goodbye; any other status is a plain status change.
        """
        self.notifier.notify(
            session,
            StatusNotice.for_status(ticket.status),
            Recipient.of_person(ticket.requester),
            ticket=ticket,
            answering=customer_thread(session, ticket),
        )
        return 1

    def paid_notice(
        self,
        session: Session,
        ticket: Ticket,
        agent_name: str,
        body: str,
        attachments: tuple[Attachment, ...] = (),
    ) -> int:
        """Before paid work starts, the reporter is told and asked to approve."""
        note = PaidNotice(
            paid={
                "price": ticket.paid_note,
                "text": body,
                "approve_url": self.links.url(ticket.id, ticket.paid_round, "approve"),
                "decline_url": self.links.url(ticket.id, ticket.paid_round, "decline"),
            },
            agent={"name": agent_name},
        )
        self.notifier.notify(
            session,
            note,
            Recipient.of_person(ticket.requester),
            ticket=ticket,
            answering=customer_thread(session, ticket),
            attachments=attachments,
        )
        return 1

    # -- to agents -------------------------------------------------------------

    def new_ticket(
        self, session: Session, ticket: Ticket, message: ParsedMessage, event: str = "new_ticket"
    ) -> int:
        """A ticket opened by mail: the agents hear of it, unless its sender has opened more
        than `[limits] new_ticket_notices_per_hour` this hour (`quiet.py`). `event`:
        "forged" for unproven mail from an agent's address, which they are warned of."""
        settings, now = self.notifier.settings, self.notifier.clock.now()
        cap = settings.limits.new_ticket_notices_per_hour
        decision = quiet.decide(session, ticket, cap, now)
        if decision.notice is Notice.EACH:
            return self.to_agents(session, ticket, event, message)
        if decision.notice is Notice.NONE:
            ticket.filed_quietly = True  # its service-level notices are not mailed either
            return 0
        log.warning(
            "more than %d new tickets from %s within an hour: agents are told once,"
            " and the sender's further new tickets are filed quietly for an hour",
            cap,
            message.from_addr,
            extra={"ticket": ticket.id},
        )
        previous = ""
        if decision.previous is not None:
            previous = desk_time(decision.previous, settings.sla.timezone)
        note = AgentQuiet(
            message.from_addr,
            cap,
            previous,
            decision.tickets_since_previous,
            quoted(message),
            proven=ticket.sender_proven,
        )
        agents = [Recipient.of_agent(agent) for agent in Agents(session).active()]
        answering = InReplyTo(message.message_id)
        return self.notifier.notify_each(session, note, agents, ticket=ticket, answering=answering)

    def replied(
        self, session: Session, ticket: Ticket, outcome: str, message: ParsedMessage, text: str
    ) -> int:
        """A customer's mail joined `ticket` and meant `outcome` (Lifecycle.customer_replied):
        the agents hear of it, unless it is one `COUNTED` past the ticket's hourly cap
        (`busy.py`)."""
        if outcome not in COUNTED:
            return self.to_agents(session, ticket, outcome, message, text=text)
        settings, now = self.notifier.settings, self.notifier.clock.now()
        cap = settings.limits.reply_notices_per_ticket_hour
        proven = COUNTED[outcome]
        told, began = busy.count(session, ticket, cap, now, proven=proven)
        if told is Told.EACH:
            return self.to_agents(session, ticket, outcome, message, text=text)
        if told is Told.NONE:
            return 0
        log.warning(
            "more than %d mails into ticket %d within an hour: agents are told once, and the"
            " rest of the hour's are filed without a notice",
            cap,
            ticket.id,
            extra={"ticket": ticket.id},
        )
        until = desk_time(as_utc(began) + busy.WINDOW, settings.sla.timezone)
        note = AgentBusy(cap, until, quoted(message, text), proven=proven)
        agents = [Recipient.of_agent(agent) for agent in self._listeners(session, ticket)]
        answering = InReplyTo(message.message_id)
        return self.notifier.notify_each(session, note, agents, ticket=ticket, answering=answering)

    def to_agents(
        self,
        session: Session,
        ticket: Ticket,
        event: str,
        message: ParsedMessage | None,
        *,
        everyone: bool = False,
        text: str = "",
    ) -> int:
        """Notify the owner (or every agent) about `event`; returns how many mails were queued."""
        agents = Agents(session).active() if everyone else self._listeners(session, ticket)
        files = message.attachments if message is not None else ()
        attached, named = fitting(files, lambda file: len(file.data))
        not_attached = tuple(
            NotAttached(filename=file.filename, size=len(file.data)) for file in named
        )
        attachments = [Attachment(f.filename, f.content_type, f.data) for f in attached]
        note = AgentNotification(event, quoted(message, text), not_attached)
        return self.notifier.notify_each(
            session,
            note,
            [Recipient.of_agent(agent) for agent in agents],
            ticket=ticket,
            answering=InReplyTo(message.message_id) if message else None,
            attachments=tuple(attachments),
        )

    @staticmethod
    def _listeners(session: Session, ticket: Ticket) -> list[Agent]:
        """Who hears of what happens to `ticket`: its owner and the colleagues who asked
        to follow it (#watch), or every agent while nobody owns it."""
        if ticket.owner is None or not ticket.owner.active:
            return Agents(session).active()
        watching = [a for a in Watchers(session).of(ticket) if a.id != ticket.owner.id]
        return [ticket.owner, *watching]

    def assigned(self, session: Session, ticket: Ticket) -> int:
        """A colleague gave `ticket` to its owner (`#assign EMAIL`): the owner hears of it,
        with the customer's newest mail, and can answer by replying."""
        owner = ticket.owner
        if owner is None or not owner.active:
            return 0
        note = AgentNotification("assigned", customers_newest(session, ticket))
        self.notifier.notify(session, note, Recipient.of_agent(owner), ticket=ticket)
        return 1

    def closed_all(self, session: Session, ticket: Ticket, agent: Agent, flood: Flood) -> int:
        """The agent who wrote `#closeall` hears what it closed and what it kept open."""
        tags = [self.notifier.tag_of(number) for number in flood.closed[:1] + flood.closed[-1:]]
        first, last = (tags[0], tags[-1]) if tags else ("", "")
        note = AgentClosedAll(
            flood.sender,
            flood.proven,
            len(flood.closed),
            first,
            last,
            flood.remaining,
            flood.owned,
            flood.other_proof,
        )
        self.notifier.notify(session, note, Recipient.of_agent(agent), ticket=ticket)
        return 1

    def critical(self, session: Session, ticket: Ticket) -> int:
        """An agent made `ticket` critical: every agent hears of it, with the customer's
        newest mail (what is critical), not the agent's command."""
        note = AgentNotification("critical", customers_newest(session, ticket))
        agents = [Recipient.of_agent(agent) for agent in Agents(session).active()]
        return self.notifier.notify_each(session, note, agents, ticket=ticket)

    def taken(self, session: Session, ticket: Ticket, former: Agent) -> int:
        """A colleague took `ticket` from its owner: the former owner hears of it, so two
        agents do not answer the customer side by side."""
        if not former.active:
            return 0
        note = AgentNotification("taken", NO_MAIL)
        self.notifier.notify(session, note, Recipient.of_agent(former), ticket=ticket)
        return 1

    def command_errors(
        self,
        session: Session,
        ticket: Ticket | None,
        message: ParsedMessage,
        agent: Agent,
        errors: list[CommandError],
    ) -> int:
        """Tell the agent what was wrong, in their language; nothing reaches the customer."""
        self.notifier.notify(
            session,
            AgentError(tuple(errors), message.subject),
            Recipient.of_agent(agent),
            ticket=ticket,
            answering=InReplyTo(message.message_id),
        )
        return 1


def quoted(message: ParsedMessage | None, text: str = "") -> Quoted:
    """What an agent's notice quotes of `message` (or `text` instead of its own): its
    head, with the links that could act for the customer taken out."""
    whole = text or (message.text if message else "")
    return {
        "from": message.from_addr if message else "",
        "from_name": message.from_name if message else "",
        "text": redact_head(whole, MAX_QUOTED),
        "cut": max(len(whole) - MAX_QUOTED, 0),
    }


def mail_language(session: Session, person: Person) -> str | None:
    """The person's own setting, else the language of their latest ticket (None: neither)."""
    if person.language in LANGUAGES:
        return str(person.language)
    latest = session.scalar(
        select(Ticket.language)
        .where(Ticket.requester_id == person.id)
        .order_by(Ticket.id.desc())
        .limit(1)
    )
    return latest if latest in LANGUAGES else None


def customers_newest(session: Session, ticket: Ticket) -> Quoted:
    """The newest mail of the customer side on `ticket`, quoted for agents; on a ticket
    the customer has not written to (taken by phone), the agent's intake text."""
    customers = Message.kind.in_(("customer", "participant"))
    # Of a longer text the database hands over only the head a quote needs.
    ours = select(
        Message.from_addr,
        Message.from_name,
        func.substr(Message.body_text, 1, MAX_QUOTED + LINK_SLACK).label("head"),
        func.length(Message.body_text).label("length"),
    ).where(Message.ticket_id == ticket.id, Message.direction == "in")
    newest = session.execute(ours.where(customers).order_by(Message.id.desc()).limit(1)).first()
    if newest is None:
        newest = session.execute(ours.order_by(Message.id).limit(1)).first()
    if newest is None:
        return NO_MAIL
    return {
        "from": newest.from_addr,
        "from_name": newest.from_name,
        "text": redact_head(newest.head, MAX_QUOTED),
        "cut": max(newest.length - MAX_QUOTED, 0),
    }


def customer_thread(session: Session, ticket: Ticket) -> InReplyTo | None:
    """The customer-visible thread, newest last, so a reply keeps the customer's thread.

    What a customer may see of the ticket (`visibility.PUBLIC`), no more: a Message-ID is
    words its writer chose, and a stranger's mail filed in her ticket unverified
    (`<Your.account.is.locked.call.1-555-0100@…>`) went out in the In-Reply-To and
    References of our next mails to her, signed by our domain, as did a bounce's."""
    ids = list(
        session.scalars(
            select(Message.message_id)
            .where(Message.ticket_id == ticket.id, PUBLIC)
            .order_by(Message.id)
        )
    )
    return InReplyTo(ids[-1], tuple(ids[:-1])) if ids else None
