"""The `maildesk` group and the commands that run or feed the daemon: init, serve, worker, deliver,
import.

The group is lazy: a command group's module is imported only when that command
runs (or when `--help` lists it), and each module imports what its commands use
inside the commands. So `maildesk --help` loads click and nothing of the daemon,
and `tickets show` loads SQLAlchemy and the models, not aiohttp or aiosmtpd.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from maildesk import __version__, heap, logs
from maildesk.cli.base import EX_DATAERR, EX_TEMPFAIL, Context, pass_context

if TYPE_CHECKING:
    import mailbox

    from maildesk.inbound.import_pool import DrainPool
    from maildesk.inbound.store import InboundStore
    from maildesk.startup import StartupError

# Command name -> the module that defines it ("module:attribute" when the module does
# not register the command on `main` itself), and the line `maildesk --help` shows for
# it, so that listing the commands imports none of them.
LAZY_COMMANDS = {
    "tickets": ("maildesk.cli.tickets", "Look at, open and export tickets."),
    "agents": ("maildesk.cli.people", "The people who answer tickets from their mail client."),
    "people": ("maildesk.cli.people", "Customers, and their optional web accounts."),
    "orgs": (
        "maildesk.cli.people",
        "Organizations: one domain's people see each other's tickets.",
    ),
    "outbox": ("maildesk.cli.queues", "Look at and retry outbound mail."),
    "quarantine": ("maildesk.cli.queues", "Messages held because they could not be processed."),
    "spam": ("maildesk.cli.spam", "Messages held as spam; release one."),
    "templates": ("maildesk.cli.templates:templates", "List, preview, check and test templates."),
    "purge": ("maildesk.cli.retention", "Forget old mail bytes, sessions and logs ([retention])."),
    "status": ("maildesk.cli.ops", "Say whether maildesk is healthy (as /healthz), and why not."),
    "backup": ("maildesk.cli.ops", "Copy the database, keys and config while the daemon runs."),
    "restore": ("maildesk.cli.ops", "Put a backup's database and keys in place."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when first run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module_name, _, attribute = LAZY_COMMANDS[cmd_name][0].partition(":")
            module = importlib.import_module(module_name)
            if attribute and cmd_name not in self.commands:
                self.add_command(getattr(module, attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None:
                rows.append((name, command.get_short_help_str(formatter.width - 16)))
            else:
                rows.append((name, LAZY_COMMANDS[name][1]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $MAILDESK_CONFIG, else config/maildesk.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option(
    "--debug", is_flag=True, help="On a start-up failure, print the traceback too (implies -v)."
)
@click.version_option(__version__, "-V", "--version", prog_name="maildesk")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool, debug: bool) -> None:
    """maildesk: an email-first helpdesk daemon. Mail in, tickets out.

    Run `maildesk COMMAND --help` for the options of a command.
    """
    logs.configure("debug" if verbose or debug else "info")
    heap.give_back_large_buffers()  # a large message's memory is freed with it
    ctx.obj = Context(config_path)
    ctx.call_on_close(ctx.obj.close)
    ctx.obj.verbose = verbose or debug
    ctx.obj.debug = debug


def fail(ctx: Context, error: StartupError) -> None:
    """One line naming the setting and the cause, the sysexits code; the traceback on --debug."""
    if ctx.debug:
        traceback.print_exception(error)
    click.echo(f"maildesk: {error}", err=True)
    sys.exit(error.exit_code)


@main.command()
@pass_context
def init(ctx: Context) -> None:
    """Create or migrate the database schema; generate the signing key if needed.

    Idempotent: run it after every upgrade (the systemd unit runs it before each start).
    """
    from maildesk.startup import StartupError, check_database, check_database_folder

    settings = ctx.settings
    try:
        check_database_folder(settings)
        if not settings.web.secret_key:
            _ensure_secret_key(settings.secret_key_path)
        check_database(settings.database.url)
        services = ctx.services
        try:
            services.prepare()
        finally:
            services.db.dispose()
    except StartupError as exc:
        fail(ctx, exc)
    click.echo(f"database ready: {_safe_url(settings.database.url)}", err=True)
    _prepare_language_model(settings.state_folder)


def _prepare_language_model(folder: Path) -> None:
    """Derive the cs/en language model into the state folder now (about a second, once
    per install; `language.py`), so the first mail whose language is guessed does not
    wait for it in a worker. Not fatal: the workers try again, and mail never waits for
    a guess."""
    from maildesk import language

    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # on PostgreSQL maybe new
        language.warm(folder)
    except Exception as exc:
        click.echo(f"language model not prepared ({exc}): a worker will try again", err=True)


def _ensure_secret_key(path: Path) -> None:
    from maildesk.startup import StartupError

    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another `init` started at the same moment wrote it
    except OSError as exc:
        raise StartupError(f"[web] secret_key_file: cannot write {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    click.echo(f"generated a signing key in {path}", err=True)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.command()
@pass_context
def serve(ctx: Context) -> None:
    """Run the daemon: SMTP/LMTP in, IMAP polling, the web listener, the outbox.

    Processing and sending run in `[workers] count` worker processes that serve
    starts, wakes and restarts (0: threads inside serve). Under systemd
    (Type=notify) it reports readiness, status and watchdog pings.
    SIGHUP re-reads the config and the templates; SIGTERM finishes the mail in
    flight and exits 0. A start-up failure is one line on stderr and exit 78
    (configuration), 69 (a service is unavailable) or 75 (port in use, retry).
    """
    import asyncio

    from maildesk.startup import StartupError, check_all

    settings = ctx.settings
    if not ctx.verbose:
        logs.set_level(settings.log.level)
    try:
        check_all(settings)
        from maildesk.app import Daemon

        asyncio.run(Daemon(ctx.services, config_path=ctx.path, verbose=ctx.verbose).run())
    except StartupError as exc:
        fail(ctx, exc)


@main.command()
@click.option("--under-serve", is_flag=True, hidden=True, help="Started by serve (stdin: orders).")
@pass_context
def worker(ctx: Context, under_serve: bool) -> None:
    """Process stored mail into tickets and send the outbox, until SIGTERM.

    `serve` starts `[workers] count` of these itself; run this for workers as
    units of their own (set `[workers] count = 0` then, or keep both: they share
    the queues through leases). SIGTERM finishes the messages it holds and exits 0;
    SIGHUP re-reads the config and the templates.
    """
    from maildesk.sdnotify import Notifier
    from maildesk.services import build
    from maildesk.startup import StartupError, check_clock, check_database
    from maildesk.supervisor import Supervisor
    from maildesk.worker import OrderPipe, beat_for_serve, run_at_niceness, run_process

    # Under serve: the settings serve runs with come first on stdin, not from the file.
    pipe = OrderPipe() if under_serve else None
    if pipe is not None:
        beat_for_serve()  # from the start: serve ends a worker that stops running
    settings = pipe.settings() if pipe is not None else ctx.settings
    if not ctx.verbose:
        logs.set_level(settings.log.level)
    # Before the threads start, so that they inherit it (a reload leaves it as it is).
    run_at_niceness(settings.workers.nice)
    try:
        check_database(settings.database.url)
        check_clock(settings)
    except StartupError as exc:
        fail(ctx, exc)
    services = build(settings)
    # Reload as serve does (templates, log level, agents), without a service manager.
    supervisor = Supervisor(services, ctx.path, Notifier({}))
    try:
        run_process(services, pipe=pipe, reload=supervisor.reload_now, apply=supervisor.apply)
    finally:
        services.db.dispose()


@main.command()
@click.option(
    "--sender", "-f", default=None, help="Envelope sender (e.g. $SENDER); '' = null sender."
)
@click.option("--recipient", "-r", multiple=True, help="Envelope recipient (repeatable).")
@pass_context
def deliver(ctx: Context, sender: str | None, recipient: tuple[str, ...]) -> None:
    """Store one message read from stdin (for an MTA pipe or procmail).

    Exit 0 once stored; 75 (EX_TEMPFAIL) when it could not be stored, so the MTA retries.
    """
    try:
        from maildesk.clock import SystemClock
        from maildesk.inbound.room import for_settings
        from maildesk.inbound.store import Envelope, InboundStore

        settings = ctx.settings
        # One byte past the limit tells enough: read whole, a pipe that never ends grew
        # this process until it ran out of memory (exit 1, and the MTA tried again).
        raw = sys.stdin.buffer.read(settings.smtp.max_message_size + 1)
        if len(raw) > settings.smtp.max_message_size:
            click.echo(
                f"message of over {settings.smtp.max_message_size} bytes exceeds the size limit",
                err=True,
            )
            sys.exit(EX_DATAERR)
        mail_from = "<>" if sender == "" else (sender or "")
        room = for_settings(settings)
        store = InboundStore(ctx.db, SystemClock(), room)
        spool_id = store.put(raw, Envelope("deliver", mail_from, recipient))
    except SystemExit:
        raise
    except BaseException as exc:  # anything at all: the MTA must keep the message
        click.echo(f"could not store the message: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"stored as {spool_id}", err=True)


@main.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--notify", is_flag=True, help="Send acknowledgements (off: old mail stays quiet).")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that process the mail, beside this one, which stores it (default: "
    "[workers] count, from 1 to 4; threads stay whole).",
)
@pass_context
def import_(ctx: Context, path: Path, notify: bool, processes: int | None) -> None:
    """Import an mbox file or a Maildir folder at PATH; safe to re-run."""
    from maildesk.inbound import importer
    from maildesk.inbound.import_pool import ImportFailed
    from maildesk.inbound.room import NoRoom

    # The cores the daemon's workers are given, as they would be: the usual reason to
    # import is a large archive, and its threads stay whole either way. At most four:
    # the processes take turns at one writer (three did no better than two here), and
    # each holds its own copy of the parsing and the models.
    processes = processes or min(max(ctx.settings.workers.count, 1), _IMPORT_PROCESSES)

    try:
        box = importer.open_archive(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with contextlib.closing(box):
        total = len(box)
        try:
            with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
                if processes > 1:
                    done = _import_in_waves(ctx, box, notify, processes, bar.update)
                else:
                    done = _import_in_order(ctx, box, notify, bar.update)
        except NoRoom as exc:
            raise click.ClickException(
                f"stopped: {exc}. Free some space and run the same command again:"
                " it imports only what is missing."
            ) from None
        except ImportFailed as exc:
            raise click.ClickException(f"import stopped: {exc}") from None
    stored, processed, stuck = done
    click.echo(
        f"{total} messages read, {stored} new, {total - stored} already imported, "
        f"{processed} processed, in {processes} process{'es' if processes > 1 else ''}",
        err=True,
    )
    if stuck:
        click.echo(
            f"{stuck} processing processes ended themselves, stuck on a message: such a "
            "message is quarantined after its attempts (maildesk quarantine list)",
            err=True,
        )


_IMPORT_PROCESSES = 4  # the most `import` runs unless told (--processes)


def _begin(ctx: Context, box: mailbox.Mailbox, pool: DrainPool) -> None:
    """Start the processes, so that their start-up runs beside the first pass over the
    archive, and process first what an interrupted import left stored but unprocessed:
    in one process and in id order (thread order), before any process takes rows
    side by side."""
    from maildesk.states import InboundState

    if len(box):
        pool.spawn()
    pending = InboundState.PENDING
    if ctx.services.store.counts(states=(pending,))[pending]:
        pool.start(alone=True)
        pool.wait(alone=True)


def _import_in_order(
    ctx: Context, box: mailbox.Mailbox, notify: bool, progress: Callable[[int], None]
) -> tuple[int, int, int]:
    """Store the archive in thread order, a batch at a time, each processed by one
    process before the next is stored. (stored, processed, processes that got stuck)"""
    from maildesk.inbound import importer
    from maildesk.inbound.import_pool import DrainPool

    store = ctx.services.store
    stored = 0
    with DrainPool(ctx.settings, 1) as pool:
        _begin(ctx, box, pool)
        for _wave, batch in importer.read_batches(box, by_wave=False):
            stored += _store_and_process(store, batch, notify, pool)
            progress(len(batch))
        return stored, pool.processed, pool.stuck


def _store_and_process(
    store: InboundStore, batch: list[bytes], notify: bool, pool: DrainPool
) -> int:
    """Store a batch and wait until it is processed; how many of it were new."""
    from maildesk.inbound import importer

    new = importer.store_batch(store, batch, notify)
    if new:
        pool.start()
    pool.wait()
    return new


def _import_in_waves(
    ctx: Context,
    box: mailbox.Mailbox,
    notify: bool,
    processes: int,
    progress: Callable[[int], None],
) -> tuple[int, int, int]:
    """Store the archive round by round (`importer.rounds`: a wave, or small waves
    for one process) and process it in `processes` processes: each round is processed
    before the next is stored."""
    from maildesk.inbound import importer
    from maildesk.inbound.import_pool import DrainPool, claim_for

    store = ctx.services.store
    stored = 0
    current: importer.Round | None = None
    with DrainPool(ctx.settings, processes) as pool:
        _begin(ctx, box, pool)
        for turn, batch in importer.read_batches(box):
            if current is not None and turn != current:
                pool.wait(alone=current.alone)
            current = turn
            new = importer.store_batch(store, batch, notify)
            if new:
                stored += new
                sharing = 1 if turn.alone else processes
                pool.start(alone=turn.alone, claim=claim_for(turn.size, sharing))
            progress(len(batch))
        pool.wait(alone=bool(current and current.alone))
        return stored, pool.processed, pool.stuck
