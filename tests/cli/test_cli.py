"""The `maildesk` command as a user runs it: config errors, init, deliver, import, tickets."""

from __future__ import annotations

import contextlib
import gc
import json
import mailbox
import os
import resource
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from maildesk import config
from maildesk.cli import EX_DATAERR, EX_TEMPFAIL, main
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.models import Inbound
from maildesk.services import build
from tests.conftest import make_mail, toml


def run(config_file: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), *args], input=stdin)


def init(config_file: Path) -> None:
    result = run(config_file, "init")
    assert result.exit_code == 0, result.output


def test_unknown_key_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[smtp]\nprot = 25\n")
    result = CliRunner().invoke(main, ["--config", str(path), "tickets", "list"])
    assert result.exit_code != 0
    assert "unknown key [smtp] prot" in result.output


def test_wrong_type_is_a_clear_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[smtp]\nport = "25"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "tickets", "list"])
    assert result.exit_code != 0
    assert "[smtp] port must be an integer" in result.output


def test_config_from_environment_variable(config_file: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MAILDESK_CONFIG", str(config_file))
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    result = CliRunner().invoke(main, ["tickets", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_init_is_idempotent_and_writes_a_private_key(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    del config_values["web"]["secret_key"]
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    init(path)
    init(path)
    keys = list(tmp_path.rglob("secret_key"))
    assert len(keys) == 1
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert len(keys[0].read_text().strip()) >= 40


def test_init_prepares_the_language_model_in_the_state_folder(
    config_file: Path, settings: Settings
) -> None:
    """Derived once per install by `init` (which the unit runs before each start), so
    that the first mail whose language is guessed does not wait for it."""
    init(config_file)
    assert list(settings.state_folder.glob("language-*.npz"))


def test_deliver_stores_and_exits_zero(config_file: Path) -> None:
    init(config_file)
    result = run(config_file, "deliver", "--sender", "alice@customer.test", stdin=make_mail())
    assert result.exit_code == 0, result.output
    assert "stored as 1" in result.output


def test_deliver_stores_an_envelope_of_bytes_that_are_no_utf8(config_file: Path) -> None:
    """An MTA's pipe passes the envelope as it came: bytes that are no UTF-8 reach
    `deliver` as lone surrogates (Python's argv), which no database stores as text."""
    init(config_file)
    result = run(
        config_file,
        "deliver",
        "--sender",
        "al\udcffice@customer.test",
        "--recipient",
        "support+\udcfe@example.test",
        stdin=make_mail(),
    )
    assert result.exit_code == 0, result.output
    assert "stored as 1" in result.output

    services = build(config.load(config_file))
    try:
        assert services.processor.process_pending().processed == 1
        with services.db.reading() as session:
            row = session.get(Inbound, 1)
            assert row is not None and row.state == "done"
            assert (row.mail_from, row.rcpt_to) == (
                "al\ufffdice@customer.test",
                ["support+\ufffd@example.test"],
            )
    finally:
        services.db.dispose()
    [ticket] = json.loads(run(config_file, "tickets", "list", "--json").output)
    assert ticket["subject"] == "Printer broken"


def test_deliver_exits_75_when_it_cannot_store(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config_values["database"]["url"] = f"sqlite:///{blocker}/maildesk.db"
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    result = run(path, "deliver", stdin=make_mail())
    assert result.exit_code == EX_TEMPFAIL
    assert "could not store" in result.output


def _mbox(path: Path, count: int) -> Path:
    box = mailbox.mbox(str(path))
    for i in range(count):
        box.add(make_mail(subject=f"Old issue {i}", message_id=f"<old{i}@customer.test>"))
    box.flush()
    box.close()
    return path


def test_import_mbox_is_quiet_and_idempotent(config_file: Path, tmp_path: Path) -> None:
    init(config_file)
    mbox = _mbox(tmp_path / "old.mbox", 5)

    first = run(config_file, "import", str(mbox))
    again = run(config_file, "import", str(mbox))

    assert first.exit_code == 0, first.output
    assert "5 new" in first.output
    assert "0 new, 5 already imported" in again.output
    listed = json.loads(run(config_file, "tickets", "list", "--json").output)
    assert [t["subject"] for t in listed] == [f"Old issue {i}" for i in range(5)]
    assert all(t["message_count"] == 1 for t in listed)  # no acknowledgements
    assert json.loads(run(config_file, "outbox", "list", "--json", "--all").output) == []


def test_commands_leave_no_file_open_in_the_calling_process(
    config_file: Path, tmp_path: Path
) -> None:
    """A process that runs commands one after another (a script calling `main`, this
    test suite) kept each one's database connections and lock files open, eight file
    descriptors a command, until `select` and then the process ran out of them."""
    init(config_file)
    mbox = _mbox(tmp_path / "old.mbox", 3)
    assert run(config_file, "import", "--processes", "2", str(mbox)).exit_code == 0

    def open_files() -> int:
        gc.collect()  # what earlier tests left for the collector closes now, not midway
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    for args in (("deliver",), ("import", "--processes", "2", str(mbox)), ("tickets", "list")):
        result = run(config_file, *args, stdin=make_mail() if args == ("deliver",) else None)
        assert result.exit_code == 0, result.output
    assert open_files() <= before


def test_import_with_notify_acknowledges(config_file: Path, tmp_path: Path) -> None:
    init(config_file)
    run(config_file, "import", "--notify", str(_mbox(tmp_path / "old.mbox", 2)))
    rows = json.loads(run(config_file, "outbox", "list", "--json").output)
    assert [r["kind"] for r in rows] == ["acknowledgement", "acknowledgement"]


def test_import_maildir(config_file: Path, tmp_path: Path) -> None:
    init(config_file)
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    box.add(make_mail(subject="From a Maildir"))
    result = run(config_file, "import", str(tmp_path / "Maildir"))
    assert result.exit_code == 0, result.output
    listed = json.loads(run(config_file, "tickets", "list", "--json").output)
    assert listed[0]["subject"] == "From a Maildir"


def test_tickets_show_and_export_share_one_shape(config_file: Path, tmp_path: Path) -> None:
    init(config_file)
    run(config_file, "import", "--notify", str(_mbox(tmp_path / "old.mbox", 2)))

    shown = json.loads(run(config_file, "tickets", "show", "1", "--json").output)
    exported = [
        json.loads(line) for line in run(config_file, "tickets", "export").output.splitlines()
    ]

    assert exported[0] == shown
    assert len(exported) == 2
    assert set(shown) >= {
        "number",
        "subject",
        "status",
        "type",
        "priority",
        "requester",
        "created_at",
        "updated_at",
        "message_count",
        "messages",
    }
    first = shown["messages"][0]
    assert set(first) >= {
        "message_id",
        "direction",
        "kind",
        "from",
        "to",
        "subject",
        "body_text",
        "created_at",
        "attachments",
        "thread_rule",
    }
    assert (first["message_id"], first["direction"]) == ("old0@customer.test", "in")
    assert shown["messages"][1]["direction"] == "out"
    assert shown["message_count"] == 2


def test_listing_commands_read_without_the_write_lock(config_file: Path, tmp_path: Path) -> None:
    """What ops run to look (lists, a ticket, an export of everything) reads in deferred
    transactions: with SQLite's write lock held meanwhile (the daemon writing a batch of
    mail), each answers at once, and an export that takes minutes never stalls the mail."""
    init(config_file)
    run(config_file, "import", str(_mbox(tmp_path / "old.mbox", 2)))
    db = Database(config.load(config_file).database.url)
    try:
        with db.transaction():  # holds the write lock (SQLite) meanwhile
            for command in (
                ("tickets", "list", "--json"),
                ("tickets", "show", "2", "--json"),
                ("tickets", "export"),
                ("people", "list", "--json"),
                ("orgs", "list", "--json"),
                ("spam", "list", "--json"),
            ):
                result = run(config_file, *command)
                assert result.exit_code == 0, (command, result.output)
            assert len(run(config_file, "tickets", "export").output.splitlines()) == 2
    finally:
        db.dispose()


def test_tickets_list_filters_by_status(config_file: Path, tmp_path: Path) -> None:
    init(config_file)
    run(config_file, "import", str(_mbox(tmp_path / "old.mbox", 2)))
    assert (
        len(json.loads(run(config_file, "tickets", "list", "--status", "new", "--json").output))
        == 2
    )
    assert (
        json.loads(run(config_file, "tickets", "list", "--status", "closed", "--json").output) == []
    )
    text = run(config_file, "tickets", "list").output
    assert "Old issue 1" in text


def test_show_unknown_ticket_is_an_error(config_file: Path) -> None:
    init(config_file)
    result = run(config_file, "tickets", "show", "99")
    assert result.exit_code == 1
    assert "no ticket 99" in result.output


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "maildesk.toml"
    path.write_text(
        '[database]\nurl = "sqlite:///data/md.db"\n[web]\nsecret_key = "k"\n'
        '[outbound]\nurl = "maildir:mail/out"\n'
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert CliRunner().invoke(main, ["--config", str(path), "init"]).exit_code == 0
    finally:
        os.chdir(cwd)
    assert (folder / "data" / "md.db").exists()


def test_agents_add_list_remove(config_file: Path) -> None:
    init(config_file)
    assert run(config_file, "agents", "add", "Agnes@Example.test", "--name", "Agnes").exit_code == 0
    listed = json.loads(run(config_file, "agents", "list", "--json").output)
    assert [(a["email"], a["name"]) for a in listed] == [("agnes@example.test", "Agnes")]
    assert run(config_file, "agents", "remove", "agnes@example.test").exit_code == 0
    assert json.loads(run(config_file, "agents", "list", "--json").output) == []
    missing = run(config_file, "agents", "remove", "nobody@example.test")
    assert missing.exit_code == 1 and "no agent nobody@example.test" in missing.output
    assert run(config_file, "agents", "add", "not-an-address").exit_code != 0


def test_agents_add_takes_a_unicode_domain_as_the_config_does(
    config_values: dict[str, Any], config_file: Path
) -> None:
    """`agents add jana@příklad.cz` answered "not an e-mail address", though the config
    takes her: she is kept as her mail names her, `jana@xn--pklad-zsa96e.cz`, and the
    command and the config find the one agent."""
    config_values["agents"] = {"addresses": ["jana@příklad.cz"]}
    config_file.write_text(toml(config_values))
    init(config_file)
    added = run(config_file, "agents", "add", "Jana@Příklad.cz", "--name", "Jana")
    assert added.exit_code == 0, added.output
    assert "agent jana@xn--pklad-zsa96e.cz added" in added.output
    listed = json.loads(run(config_file, "agents", "list", "--json").output)
    assert [(a["email"], a["name"]) for a in listed] == [("jana@xn--pklad-zsa96e.cz", "Jana")]
    init(config_file)  # the config seeds her again at every start: still one agent
    assert len(json.loads(run(config_file, "agents", "list", "--json").output)) == 1
    assert run(config_file, "agents", "add", "jana@příklad").exit_code != 0


def test_agents_have_a_language(config_file: Path) -> None:
    init(config_file)
    added = run(config_file, "agents", "add", "agnes@example.test", "--language", "en")
    assert added.exit_code == 0
    assert run(config_file, "agents", "add", "bob@example.test").exit_code == 0
    listed = json.loads(run(config_file, "agents", "list", "--json").output)
    assert [(a["email"], a["language"]) for a in listed] == [
        ("agnes@example.test", "en"),
        ("bob@example.test", None),
    ]
    assert run(config_file, "agents", "language", "bob@example.test", "cs").exit_code == 0
    assert run(config_file, "agents", "language", "agnes@example.test", "default").exit_code == 0
    listed = json.loads(run(config_file, "agents", "list", "--json").output)
    assert [a["language"] for a in listed] == [None, "cs"]
    assert run(config_file, "agents", "add", "carl@example.test", "--language", "de").exit_code
    missing = run(config_file, "agents", "language", "nobody@example.test", "en")
    assert missing.exit_code == 1 and "no agent nobody@example.test" in missing.output


def test_customer_commands_take_a_unicode_domain_as_mail_names_it(
    config_file: Path, tmp_path: Path
) -> None:
    """Petr writes from `petr@xn--pklad-zsa96e.cz`, the form mail names him in. Typed
    as `petr@příklad.cz`, `tickets create --for` and `people invite` answered "not an
    e-mail address", and `people language` "no person": each now means the Petr of his
    mail, and `tickets close --from` closes his tickets."""
    init(config_file)
    petr = "petr@xn--pklad-zsa96e.cz"
    mbox = mailbox.mbox(tmp_path / "in.mbox")
    mbox.add(make_mail("Invoice", f"Petr <{petr}>"))
    mbox.flush()
    assert run(config_file, "import", str(tmp_path / "in.mbox")).exit_code == 0

    opened = run(config_file, "tickets", "create", "--for", "Petr@Příklad.cz", "--subject", "Call")
    assert opened.exit_code == 0, opened.output
    shown = json.loads(run(config_file, "tickets", "show", "2", "--json").output)
    assert shown["requester"] == petr
    invited = run(config_file, "people", "invite", "petr@příklad.cz")
    assert invited.exit_code == 0 and f"invitation queued for {petr}" in invited.output
    assert run(config_file, "people", "language", "petr@příklad.cz", "en").exit_code == 0
    people = json.loads(run(config_file, "people", "list", "--json").output)
    assert [(p["email"], p["language"]) for p in people] == [(petr, "en")]
    closed = run(config_file, "tickets", "close", "--from", "petr@příklad.cz", "--json")
    assert json.loads(closed.output)["closed"] == [1, 2]


def test_tickets_create_for_a_phone_call(config_file: Path) -> None:
    init(config_file)
    result = run(
        config_file,
        "tickets",
        "create",
        "--for",
        "bob@customer.test",
        "--subject",
        "Server down",
        "--priority",
        "critical",
        "--description",
        "Bob called at 9:05.",
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(run(config_file, "tickets", "show", "1", "--json").output)
    assert (shown["requester"], shown["priority"], shown["channel"]) == (
        "bob@customer.test",
        "critical",
        "phone",
    )
    [note, ack] = shown["messages"]
    assert note["internal"] and note["body_text"] == "Bob called at 9:05."
    assert ack["kind"] == "acknowledgement" and ack["to"] == ["bob@customer.test"]
    assert [(e["field"], e["new"], e["via"]) for e in shown["events"]] == [
        ("priority", "critical", "cli")
    ]
    text = run(config_file, "tickets", "show", "1").output
    assert "priority: normal -> critical" in text


def test_import_reads_only_the_maildirs_own_files(config_file: Path, tmp_path: Path) -> None:
    """A hostile archive: a symlink to another file of ours and a FIFO. Each was read as
    a message: the file outside the archive became a ticket, and a FIFO nobody writes
    held the import for good (a symlink to /dev/zero, a message that never ends, grew it
    until it ran out of memory). Only the archive's own message is imported."""
    init(config_file)
    outside = tmp_path / "private.txt"
    outside.write_bytes(make_mail(subject="Not in the archive"))
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    box.add(make_mail(subject="From a Maildir"))
    new = tmp_path / "Maildir" / "new"
    (new / "1.outside").symlink_to(outside)
    fifo = new / "2.fifo"
    os.mkfifo(fifo)
    # A writer, so that each reader of the FIFO gets a message and its end instead of
    # hanging the test; it waits for a reader that should never come.
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            with contextlib.suppress(BrokenPipeError):  # the reader let go at once
                fifo.write_bytes(make_mail(subject="From a FIFO"))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        result = run(config_file, "import", str(tmp_path / "Maildir"))
    finally:
        # Let the writer go: a reader that leaves at once.
        done.set()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)

    assert result.exit_code == 0, result.output
    assert "1 messages read, 1 new" in result.output
    listed = json.loads(run(config_file, "tickets", "list", "--json").output)
    assert [t["subject"] for t in listed] == ["From a Maildir"]
    for name in ("1.outside", "2.fifo"):
        assert f"skipped new/{name}: not a regular file" in result.output


def test_deliver_refuses_a_message_that_never_ends_without_reading_it_all(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """An MTA pipe that never ends (here /dev/zero): `deliver` read all of stdin before
    it compared the size with the limit, so it grew until it ran out of memory and
    exited 1 (the MTA retried it later, to the same end). It reads one byte past the
    limit and refuses with EX_DATAERR. (Memory capped at 1 GB, so the old way fails fast.)"""
    config_values["smtp"]["max_message_size"] = 1024 * 1024
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    init(path)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    with open("/dev/zero", "rb") as endless:
        done = subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(path), "deliver"],
            stdin=endless,
            capture_output=True,
            preexec_fn=cap_memory,
            timeout=120,
        )
    assert done.returncode == EX_DATAERR, done.stderr.decode()[-500:]
    assert b"exceeds the size limit" in done.stderr
