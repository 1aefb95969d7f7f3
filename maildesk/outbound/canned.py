"""Canned replies: `templates/<language>/replies/NAME.txt.j2`, put into an agent's answer.

`#reply NAME` renders the reply in the ticket's language and puts it above
whatever the agent wrote; `#replies` lists the names. A canned reply is one
plain Jinja2 template (no blocks: the whole file is the text), in the same
sandbox with `StrictUndefined` as the notifications, and gets `ticket`,
`customer`, `agent` and `support` (templates/README.md lists their keys).

This module decides what a name may be, which names exist in a language, and
what is wrong with a canned reply (`problems`, for `maildesk templates check`).
An unknown name, a name missing in the ticket's language or a reply that
does not render is an error for the agent: the customer never gets half a
canned answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from maildesk.clock import Clock
from maildesk.models import STATUS_LABELS, Ticket
from maildesk.outbound.render import Problem, describe, error_location, make_environment
from maildesk.tickets.command_errors import Code, CommandError, error

FOLDER = "replies"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SUFFIX = ".txt.j2"


class CannedReplyError(Exception):
    """Why `#reply NAME` cannot be used; the error goes back to the agent, in their language."""

    def __init__(self, problem: CommandError) -> None:
        super().__init__(str(problem))
        self.error = problem


@dataclass(frozen=True)
class AgentInfo:
    name: str
    email: str


def names(path: Path | str, language: str) -> list[str]:
    """The canned replies that exist in `language`, sorted."""
    folder = Path(path) / language / FOLDER
    if not folder.is_dir():
        return []
    return sorted(
        f.name.removesuffix(_SUFFIX)
        for f in folder.glob(f"*{_SUFFIX}")
        if NAME.match(f.name.removesuffix(_SUFFIX))
    )


def languages_of(path: Path | str) -> dict[str, list[str]]:
    """Every canned reply name with the languages it exists in."""
    found: dict[str, list[str]] = {}
    for language_folder in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        for name in names(path, language_folder.name):
            found.setdefault(name, []).append(language_folder.name)
    return dict(sorted(found.items()))


def context(
    ticket: Ticket,
    agent: AgentInfo,
    support: dict[str, str],
    *,
    withheld: bool = False,
    name_withheld: bool = False,
) -> dict[str, Any]:
    """What a canned reply is rendered with (plain data only).

    `withheld`: the ticket's words may be a stranger's (`strangers_words.py`), so its
    subject is `""`, as in every other mail to its customer; `name_withheld`: so may be
    the requester's name (`""`). A canned reply goes out in the agent's answer: an
    agent's routine `#reply need-details` to a forged ticket sent its victim "thank you
    for your message about" the forger's subject, signed by our domain."""
    labels = STATUS_LABELS.get(ticket.language, STATUS_LABELS["en"])
    return {
        "ticket": {
            "number": ticket.id,
            "subject": "" if withheld else ticket.subject,
            "status": ticket.status,
            "status_label": labels.get(ticket.status, ticket.status),
            "type": ticket.type or "",
            "priority": ticket.priority,
        },
        "customer": {
            "email": ticket.requester.email,
            "name": "" if withheld or name_withheld else ticket.requester.name,
        },
        "agent": {"name": agent.name, "email": agent.email},
        "support": support,
    }


class CannedReplies:
    """Renders canned replies from the templates folder `path()` names (it may change on reload)."""

    def __init__(self, path: Callable[[], Path | str], clock: Clock | None = None) -> None:
        self._path = path
        self._clock = clock
        self._envs: dict[str, SandboxedEnvironment] = {}

    def _env(self) -> SandboxedEnvironment:
        key = str(self._path())
        if key not in self._envs:
            # Kept: it looks for edits itself, within a second (template_files.py).
            self._envs[key] = make_environment(key, self._clock)
        return self._envs[key]

    def names(self, language: str) -> list[str]:
        return names(self._path(), language)

    def render(self, name: str, language: str, values: dict[str, Any]) -> str:
        name = name.lower()
        if not NAME.match(name):
            raise CannedReplyError(error(Code.CANNED_NOT_NAME, f"#reply {name}"))
        try:
            template = self._env().get_template(f"{language}/{FOLDER}/{name}{_SUFFIX}")
            return template.render(values).strip()
        except TemplateNotFound:
            elsewhere = languages_of(self._path()).get(name)
            if elsewhere:
                problem = error(Code.CANNED_NO_LANGUAGE, f"#reply {name}", language=language,
                                languages=", ".join(elsewhere))  # fmt: skip
                raise CannedReplyError(problem) from None
            known = ", ".join(self.names(language))
            if known:
                problem = error(Code.CANNED_UNKNOWN, f"#reply {name}", known=known)
            else:
                problem = error(Code.CANNED_NONE, f"#reply {name}")
            raise CannedReplyError(problem) from None
        except Exception as exc:
            problem = error(Code.CANNED_BROKEN, f"#reply {name}", problem=describe(exc))
            raise CannedReplyError(problem) from exc


def problems(path: Path | str, samples: Iterable[dict[str, Any]]) -> list[Problem]:
    """Syntax errors and render failures of every canned reply, as `file:line: message`."""
    env = make_environment(path)
    contexts = list(samples)
    found: list[Problem] = []
    for name, languages in languages_of(path).items():
        for language in languages:
            relative = f"{language}/{FOLDER}/{name}{_SUFFIX}"
            file = str(Path(path) / relative)
            try:
                template = env.get_template(relative)
            except TemplateSyntaxError as exc:
                found.append(Problem(file, exc.lineno, exc.message or "syntax error"))
                continue
            for values in contexts:
                try:
                    if not template.render(values).strip():
                        found.append(Problem(file, None, "renders empty"))
                except Exception as exc:
                    where, line = error_location(exc)
                    found.append(Problem(where if where != "?" else file, line, str(exc)))
    return list(dict.fromkeys(found))
