"""What a stranger's mail can do to the terminal of ops who read it: escape sequences and
line separators in a body or a Message-ID, and our own set-password links in what the
commands print. Each case sends the mail over SMTP to a running daemon."""

from __future__ import annotations

import io
import re
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from maildesk import logs
from maildesk.cli import main
from tests.conftest import RunningDaemon, make_mail, wait_for
from tests.helpers import ticket, tickets

# An OSC that retitles the terminal, a screen clear, then a forged line.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[H"


class Terminal(io.StringIO):
    """stderr as `maildesk serve` or `maildesk import` has it when run by hand."""

    def isatty(self) -> bool:
        return True


def test_tickets_show_prints_no_control_characters_of_a_strangers_body(
    daemon: RunningDaemon, config_file: Path
) -> None:
    """`tickets show N` printed the stored body line by line as it was: a stranger's
    escape sequences reached the ops terminal raw (`table()` folded them already)."""
    body = f"hello{HOSTILE}Ticket #1: all fine, closed by admin"
    daemon.send(make_mail(subject="Printer broken", body=body))
    wait_for(lambda: tickets(daemon.services), what="the ticket")

    shown = CliRunner().invoke(main, ["--config", str(config_file), "tickets", "show", "1"])

    assert shown.exit_code == 0, shown.output
    assert "hello" in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, repr(shown.stdout)


def test_a_strangers_message_id_writes_no_escape_sequence_into_a_terminal_log(
    daemon: RunningDaemon, restore_logging: None
) -> None:
    """A Message-ID may hold ESC and BEL: it is logged as written ("inbound N is a
    duplicate of <...>"), and the readable formatter (a terminal's) printed it raw."""
    stream = Terminal()
    logs.configure("info", stream)
    raw = make_mail(message_id="<x@y>").replace(
        b"Message-ID: <x@y>", f"Message-ID: <a{HOSTILE}b@evil.test>".encode()
    )
    daemon.send(raw)
    daemon.send(raw)  # the same mail again: a duplicate, logged with its id
    wait_for(lambda: "duplicate" in stream.getvalue(), what="the duplicate's log line")

    line = next(x for x in stream.getvalue().splitlines() if "duplicate" in x)
    assert "\x1b" not in line and "\x07" not in line, repr(line)


def test_the_cli_prints_no_live_set_password_token(
    daemon: RunningDaemon, config_file: Path
) -> None:
    """A stranger's first mail (any From) gets an acknowledgement with a set-password link;
    its text is stored as the ticket's outgoing message. The portal, `#show`, agents'
    notifications and search snippets redact the token; `tickets show` and `tickets
    export` printed it whole: whoever read (or was sent) an export could take the
    account."""
    daemon.send(make_mail(subject="Printer broken"))
    wait_for(lambda: len(tickets(daemon.services)) == 1, what="the ticket")
    wait_for(lambda: ticket(daemon.services, 1)["message_count"] == 2, what="the acknowledgement")

    outputs = {}
    for command in (("tickets", "show", "1"), ("tickets", "export")):
        result = CliRunner().invoke(main, ["--config", str(config_file), *command])
        assert result.exit_code == 0, result.output
        outputs[" ".join(command)] = result.stdout

    link = re.search(r"/account/set-password\?token=([\w.-]+)", outputs["tickets show 1"])
    if link is not None:  # prove the printed token is live: the portal takes it
        page = urllib.request.urlopen(  # noqa: S310 - the test's own loopback daemon
            f"http://127.0.0.1:{daemon.services.settings.web.port}{link.group(0)}"
        )
        assert page.status == 200 and 'name="token"' in page.read().decode()
    for command, output in outputs.items():
        assert "set-password?token=eyJ" not in output, (command, link and link.group(0))


def test_json_output_carries_no_raw_c1_control_of_a_strangers_body(
    daemon: RunningDaemon, config_file: Path
) -> None:
    """JSON keeps non-ASCII text readable, and json.dumps escapes C0 only: a body's
    U+009B (CSI to terminals that obey C1) and U+2028 reached the terminal raw."""
    daemon.send(make_mail(subject="Printer broken", body="hi \u009b2J\u009bH forged \u2028line"))
    wait_for(lambda: tickets(daemon.services), what="the ticket")

    for command in (("tickets", "show", "1", "--json"), ("tickets", "export")):
        result = CliRunner().invoke(main, ["--config", str(config_file), *command])
        assert result.exit_code == 0, result.output
        raw = [c for c in result.stdout if "\x7f" <= c <= "\x9f" or c in "\u2028\u2029"]
        assert not raw, (command, raw)
