"""Templates admins own: hot reload that never stops mail, the `templates` commands, and
every notification being a well-formed message of the support domain."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from maildesk import config, templates_admin
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.config import LANGUAGES, PACKAGE_TEMPLATES
from maildesk.models import Ticket
from maildesk.outbound.catalogue import KINDS, Tie
from maildesk.outbound.notify import InReplyTo, Recipient
from maildesk.outbound.render import Renderer, discover
from maildesk.services import Services
from tests.conftest import Outbox, make_mail
from tests.helpers import outbox_rows, receive

README = PACKAGE_TEMPLATES / "README.md"


def run(config_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), *args])


def edit(path: Path, old: str, new: str) -> None:
    """Change a template on disk and move its mtime on, as a later save would."""
    before = path.stat().st_mtime
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    os.utime(path, (before + 10, before + 10))


def closed(renderer: Renderer, settings: config.Settings) -> str:
    notifier = templates_admin.sample_notifier(settings)
    context = templates_admin.sample_context(notifier, "closed", "en")
    return renderer.render("closed", "en", context).text


# -- hot reload --------------------------------------------------------------

# What README promises an admin: an edit is used within a second. The renderers
# here run on the test's ManualClock, so "a second later" is a clock.advance.
SECOND = timedelta(seconds=1)


@pytest.fixture
def renderer(own_templates: Path, clock: ManualClock) -> Renderer:
    return Renderer(own_templates, "en", clock=clock)


def test_a_valid_edit_shows_up_without_a_restart(
    renderer: Renderer, own_templates: Path, settings: config.Settings, clock: ManualClock
) -> None:
    assert "Thank you for working with us" in closed(renderer, settings)
    edit(own_templates / "en/closed.txt.j2", "Thank you for", "Many thanks for")
    clock.advance(SECOND)
    assert "Many thanks for working with us" in closed(renderer, settings)


def test_an_edit_is_used_once_a_second_has_passed_and_not_before(
    own_templates: Path, services: Services, settings: config.Settings, clock: ManualClock
) -> None:
    file = own_templates / "en/closed.txt.j2"
    assert "Thank you for working" in closed(services.renderer, settings)
    edit(file, "Thank you for", "Many thanks for")
    clock.advance(SECOND - timedelta(milliseconds=1))
    # Within the second of its last look the file is not read again: no stat per mail.
    assert "Thank you for working" in closed(services.renderer, settings)
    clock.advance(timedelta(milliseconds=1))
    assert "Many thanks for working" in closed(services.renderer, settings)
    assert "Many thanks for working" in closed(services.renderer, settings)


def test_a_second_save_with_the_same_timestamp_and_size_is_used(
    own_templates: Path, services: Services, settings: config.Settings, clock: ManualClock
) -> None:
    file = own_templates / "en/closed.txt.j2"
    stamp = file.stat().st_mtime_ns
    assert "Thank you for working" in closed(services.renderer, settings)
    # Saved again within the file system's timestamp granularity (a second on some),
    # same length: the modification time and size say nothing changed.
    text = file.read_text(encoding="utf-8")
    file.write_text(text.replace("Thank you for", "THANK YOU FOR"), encoding="utf-8")
    os.utime(file, ns=(stamp, stamp))
    assert file.stat().st_size == len(text.encode())
    clock.advance(SECOND)
    assert "THANK YOU FOR working" in closed(services.renderer, settings)


def test_a_deleted_template_goes_within_a_second_and_comes_back(
    own_templates: Path, services: Services, settings: config.Settings, clock: ManualClock
) -> None:
    notifier = templates_admin.sample_notifier(settings)
    context = templates_admin.sample_context(notifier, "closed", "cs")
    czech = own_templates / "cs/closed.txt.j2"
    source = czech.read_text(encoding="utf-8")
    assert services.renderer.render("closed", "cs", context).language == "cs"
    czech.unlink()
    assert services.renderer.render("closed", "cs", context).language == "cs"  # in memory
    clock.advance(SECOND)
    # Gone: the mail goes out in the default language instead.
    assert services.renderer.render("closed", "cs", context).language == "en"
    czech.write_text(source.replace("Děkujeme", "Díky"), encoding="utf-8")
    clock.advance(SECOND)
    rendered = services.renderer.render("closed", "cs", context)
    assert rendered.language == "cs" and "Díky" in rendered.text


def test_a_syntax_error_keeps_the_last_good_version_and_is_logged(
    renderer: Renderer,
    own_templates: Path,
    settings: config.Settings,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="maildesk.templates")
    file = own_templates / "en/closed.txt.j2"
    assert "Thank you for working" in closed(renderer, settings)

    edit(file, "Thank you for", "{% if %}Many thanks for")
    clock.advance(SECOND)
    assert "Thank you for working" in closed(renderer, settings)
    [record] = [r for r in caplog.records if r.name == "maildesk.templates"]
    assert f"{file}:6: Expected an expression" in record.getMessage()
    assert "last good version" in record.getMessage()

    edit(file, "{% if %}Many thanks for", "Many thanks for")
    clock.advance(SECOND)
    assert "Many thanks for working" in closed(renderer, settings)


def test_a_render_error_keeps_the_last_good_version_and_is_logged(
    renderer: Renderer,
    own_templates: Path,
    settings: config.Settings,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="maildesk.templates")
    file = own_templates / "en/closed.txt.j2"
    closed(renderer, settings)
    edit(file, "Thank you for", "{{ ticket.no_such_field }} Thank you for")
    clock.advance(SECOND)
    assert "\nThank you for working" in closed(renderer, settings)
    assert f"{file}:6: 'dict object' has no attribute 'no_such_field'" in caplog.text


def test_a_fresh_process_with_a_broken_copy_renders_the_shipped_version(
    own_templates: Path, settings: config.Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="maildesk.templates")
    edit(own_templates / "en/closed.txt.j2", "{% block body %}", "{% block body %}{{")
    assert "Thank you for working" in closed(Renderer(own_templates, "en"), settings)
    assert "shipped version" in caplog.text


def test_with_nothing_to_fall_back_on_the_mail_goes_out_in_another_language(
    own_templates: Path, settings: config.Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="maildesk.templates")
    renderer = Renderer(own_templates, "en")
    renderer._shipped = None  # as when [templates] path is the package's own folder
    edit(own_templates / "cs/closed.txt.j2", "{{ support.name }}", "{{ support.nme }}")
    notifier = templates_admin.sample_notifier(settings)
    context = templates_admin.sample_context(notifier, "closed", "cs")
    rendered = renderer.render("closed", "cs", context)
    assert rendered.language == "en" and "Thank you for working" in rendered.text
    assert "cs/closed.txt.j2:8:" in caplog.text


def test_a_strict_renderer_raises_instead(own_templates: Path, settings: config.Settings) -> None:
    edit(own_templates / "en/closed.txt.j2", "{{ support.name }}", "{{ support.nme }}")
    with pytest.raises(Exception, match="nme"):
        closed(Renderer(own_templates, "en", strict=True), settings)


def test_an_html_part_is_picked_up_and_dropped_without_a_restart(
    renderer: Renderer, own_templates: Path, settings: config.Settings, clock: ManualClock
) -> None:
    notifier = templates_admin.sample_notifier(settings)
    context = templates_admin.sample_context(notifier, "closed", "en")
    assert renderer.render("closed", "en", context).html is None
    html = own_templates / "en/closed.html.j2"
    html.write_text('{% block body %}<p>{{ ticket.tag ~ " & done" }}</p>{% endblock %}')
    # A part found missing is not looked for again within the second.
    assert renderer.render("closed", "en", context).html is None
    clock.advance(SECOND)
    assert renderer.render("closed", "en", context).html == "<p>[#42] &amp; done</p>"
    html.unlink()
    clock.advance(SECOND)
    assert renderer.render("closed", "en", context).html is None
    # A broken HTML part with no good version to fall back on: the text goes alone.
    html.write_text("{% block body %}{{ ticket.nope }}{% endblock %}")
    clock.advance(SECOND)
    rendered = renderer.render("closed", "en", context)
    assert rendered.html is None and "Thank you for working" in rendered.text
    html.unlink()
    clock.advance(SECOND)
    assert renderer.render("closed", "en", context).html is None


# -- the commands --------------------------------------------------------------


def test_list_names_every_template_with_languages_and_parts(config_file: Path) -> None:
    result = run(config_file, "templates", "list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in ("acknowledgement", "resolved", "status_changed", "waiting_customer"):
        assert "cs:" in lines[name] and "en:" in lines[name]
    assert "text+html" in lines["acknowledgement"]
    assert "(agent)" in lines["agent_digest"] and "(customer)" in lines["closed"]


def test_list_json_says_how_each_kind_is_sent(config_file: Path) -> None:
    result = run(config_file, "templates", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["templates"]}
    assert rows["agent_reply"] | {"languages": None} == {
        "name": "agent_reply",
        "languages": None,
        "audience": "customer",
        "language": "ticket",
        "automatic": False,
        "sent_by_maildesk": True,
    }
    assert rows["agent_sla"]["language"] == "agent" and rows["agent_sla"]["automatic"]
    assert rows["acknowledgement"]["language"] == "customer"


def test_check_passes_on_the_shipped_templates(config_file: Path) -> None:
    result = run(config_file, "templates", "check")
    assert result.exit_code == 0, result.output
    assert "templates OK" in result.output


def test_check_names_file_and_line_of_each_problem(own_templates: Path, config_file: Path) -> None:
    closed, resolved = own_templates / "en/closed.txt.j2", own_templates / "cs/resolved.txt.j2"
    edit(closed, "{{ ticket.status_label }}", "{{ ticket.status_lable }}")
    # In a branch no sample takes: found in the source, not by rendering.
    edit(resolved, "{{ support.name }}", "{% if false %}{{ signature }}{% endif %}")
    edit(own_templates / "en/resolved.txt.j2", "{% endblock %}", "{% endif %}")
    result = run(config_file, "templates", "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{closed}:5: 'ticket.status_lable' is undefined (ticket has: ")
    assert lines[1].startswith(f"{resolved}:11: 'signature' is undefined (this template gets: ")
    assert lines[2].startswith(f"{own_templates}/en/resolved.txt.j2:1: Encountered unknown tag")
    assert len(lines) == 3
    assert "3 problem(s)" in result.stderr


def test_check_holds_an_html_part_to_the_same_data(own_templates: Path, config_file: Path) -> None:
    html = own_templates / "cs/closed.html.j2"
    html.write_text(
        "{% block body %}\n<p>{{ customer.name }}</p>\n<p>{{ ticket.stav }}</p>\n{% endblock %}\n"
    )
    result = run(config_file, "templates", "check")
    assert result.exit_code == 1
    assert result.stdout == f"{html}:3: 'ticket.stav' is undefined (ticket has: " + (
        "number, owner, priority, priority_name, requester, requester_name, status, "
        "status_label, status_labels, status_name, subject, tag, type, type_name)\n"
    )


def test_preview_with_sample_data_and_html_to_a_file(config_file: Path, tmp_path: Path) -> None:
    html = tmp_path / "ack.html"
    result = run(
        config_file, "templates", "preview", "acknowledgement", "--lang", "cs", "--html", str(html)
    )
    assert result.exit_code == 0, result.output
    assert "Subject: [#42] Tiskárna ve 2. patře tiskne prázdné stránky" in result.stdout
    assert "Dobrý den, Jan Novák," in result.stdout
    assert '<html lang="cs">' in html.read_text()


def test_preview_with_a_real_ticket(services: Services, config_file: Path) -> None:
    receive(services, make_mail(subject="Scanner jams", sender="Bob Doe <bob@customer.test>"))
    result = run(config_file, "templates", "preview", "status_changed", "--ticket", "1")
    assert result.exit_code == 0, result.output
    assert "Subject: [#1] Scanner jams: New" in result.stdout
    assert "Hello Bob Doe," in result.stdout
    assert "(in Czech: Nový)" in result.stdout
    missing = run(config_file, "templates", "preview", "closed", "--ticket", "99")
    assert missing.exit_code != 0 and "no ticket 99" in missing.output


def test_send_test_queues_a_sample_that_the_sender_delivers(
    services: Services, config_file: Path, clock: ManualClock, outbox: Outbox
) -> None:
    result = run(config_file, "templates", "send-test", "resolved", "--to", "admin@example.org")
    assert result.exit_code == 0, result.output
    [row] = outbox_rows(services)
    assert (row.kind, row.recipients, row.state) == ("resolved", ["admin@example.org"], "pending")
    # The command ran on the real clock: bring the test's clock up to it.
    clock.advance(datetime.now(UTC) - clock.now() + timedelta(minutes=1))
    assert services.sender().send_due() == 1
    [message] = outbox.messages()
    assert message["To"] == "admin@example.org"
    assert message["Subject"] == "[#42] Resolved: The printer on floor 2 prints blank pages"


def test_send_test_refuses_a_broken_template(own_templates: Path, config_file: Path) -> None:
    edit(own_templates / "en/closed.txt.j2", "{{ support.name }}", "{{ support.nme }}")
    result = run(config_file, "templates", "send-test", "closed", "--to", "admin@example.org")
    assert result.exit_code != 0
    assert "closed.txt.j2:8: 'dict object' has no attribute 'nme'" in result.output


def test_readme_documents_every_template() -> None:
    text = README.read_text()
    for info in discover(PACKAGE_TEMPLATES):
        assert f"`{info.name}`" in text, info.name
        assert info.name in KINDS, f"{info.name}: not in the notification catalogue"


# -- good citizens ---------------------------------------------------------------


def queue_every_notification(services: Services, names: list[str]) -> list[tuple[str, str, bytes]]:
    """Each template in each language, sent through the Notifier as the code sends it."""
    receive(services, make_mail(subject="Printer broken", message_id="<m1@customer.test>"))
    base = services.settings.support.base_url
    queued = []
    for name in names:
        kind = KINDS[name]
        for lang in LANGUAGES:
            with services.db.transaction() as session:
                ticket = session.get(Ticket, 1)
                assert ticket is not None
                ticket.status, ticket.language = kind.usual_status, lang
                to = replace(templates_admin.recipient_for(name, ticket), language=lang)
                tied = kind.tie is not Tie.UNTIED
                row = services.notifier.notify(
                    session,
                    kind.sample(lang, base),
                    to,
                    ticket=ticket if tied else None,
                    answering=InReplyTo("m1@customer.test") if tied else None,
                )
                session.flush()
                queued.append((name, lang, row.raw))
    return queued


def test_every_notification_is_well_formed_mail_of_the_support_domain(
    services: Services,
) -> None:
    for name, lang, raw in queue_every_notification(services, list(KINDS)):
        where = f"{name} ({lang})"
        bare = raw.replace(b"\r\n", b"")
        assert raw.isascii() and b"\n" not in bare and b"\r" not in bare, where
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998, where
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert not message.defects, (where, message.defects)
        for field in ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version"):
            assert len(message.get_all(field) or []) == 1, (where, field)
            assert not message[field].defects, (where, field, message[field].defects)
        assert message["Message-ID"].endswith("@example.test>"), where
        assert message["From"].addresses[0].addr_spec == "support@example.test", where
        automatic = KINDS[name].automatic
        assert message["Auto-Submitted"] == ("auto-replied" if automatic else None), where
        assert message.get_body(("plain",)) is not None, where


def test_sample_context_is_what_the_notifier_passes(settings: config.Settings) -> None:
    notifier = templates_admin.sample_notifier(settings)
    context = templates_admin.sample_context(notifier, "resolved", "cs")
    assert set(context) == {"ticket", "recipient", "customer", "support", "words"}
    assert context["ticket"]["status_labels"] == {
        "cs": "Vyřešen, čeká na potvrzení/uzavření",
        "en": "Resolved, waiting for confirmation",
    }
    assert context["words"] == {"confirm": "POTVRZUJI"}
    invitation = templates_admin.sample_context(notifier, "invitation", "en")
    assert invitation["ticket"] is None and invitation["invitation_url"].startswith(
        "http://127.0.0.1:8080/account/set-password?token="
    )


def test_no_shipped_text_leaves_two_blank_lines_where_a_part_is_empty(
    settings: config.Settings,
) -> None:
    """A paragraph left out (no account offered, no service level) left its blank line
    beside the next one: an acknowledgement ended in two empty lines before the
    signature. Every sample of every shipped template, in each language."""
    notifier = templates_admin.sample_notifier(settings)
    renderer = Renderer(PACKAGE_TEMPLATES, "en", strict=True)
    gaps = set()
    for name in KINDS:
        for language in LANGUAGES:
            for context in templates_admin.contexts(notifier, name, language):
                if "\n\n\n" in renderer.render(name, language, context).text:
                    gaps.add((name, language))
    assert not gaps


def test_recipient_of_agent_templates_is_an_agent() -> None:
    ticket = templates_admin.sample_ticket("new", "en")
    assert templates_admin.recipient_for("agent_digest", ticket).agent_id is not None
    assert templates_admin.recipient_for("closed", ticket) == Recipient(
        "jan.novak@customer.test", "Jan Novák"
    )
