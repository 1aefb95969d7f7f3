"""The CLI as a tool people use all day: a version, help everywhere, JSON, and commands
that load only what they use (timed in README.md; here, which libraries get imported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from maildesk import __version__
from maildesk.cli import main
from maildesk.cli.main import LAZY_COMMANDS

# What a read-only command must not pay for: the daemon's libraries.
DAEMON_LIBRARIES = (
    "aiohttp",
    "aiosmtpd",
    "apscheduler",
    "argon2",
    "dkim",
    "flufl.bounce",
    "imapclient",
    "jinja2",
    "mailparser",
    "alembic",
)


def loaded_by(args: list[str], cwd: Path) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running `maildesk ARGS`."""
    code = (
        "import sys\n"
        "from maildesk.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stderr.splitlines()[-1].split())


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"maildesk, version {__version__}"


def _walk(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found += _walk(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in _walk(main, "maildesk"):
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}")
    assert missing == []


def test_the_command_list_matches_the_commands() -> None:
    """`maildesk --help` lists the lazy commands from a table; it must not drift."""
    ctx = click.Context(main)
    for name, (_, line) in LAZY_COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, name
        assert line.strip()


def test_help_loads_nothing_of_the_daemon_nor_the_database(tmp_path: Path) -> None:
    loaded = loaded_by(["--help"], tmp_path)
    heavy = {m for m in loaded if m.split(".")[0] in {*DAEMON_LIBRARIES, "sqlalchemy"}}
    assert heavy == set()


def test_tickets_show_json_loads_no_daemon_library(config_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config_file), "init"]).exit_code == 0
    created = runner.invoke(
        main,
        [
            "--config",
            str(config_file),
            "tickets",
            "create",
            "--for",
            "a@customer.test",
            "--subject",
            "Printer",
        ],
    )
    assert created.exit_code == 0, created.output
    loaded = loaded_by(["--config", str(config_file), "tickets", "show", "1", "--json"], tmp_path)
    heavy = {m for m in loaded if m in DAEMON_LIBRARIES or m.split(".")[0] in DAEMON_LIBRARIES}
    assert heavy == set()


def test_templates_list_json(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(config_file), "templates", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {t["name"]: t for t in data["templates"]}
    assert by_name["acknowledgement"]["languages"] == {
        "cs": ["text", "html"],
        "en": ["text", "html"],
    }
    assert by_name["acknowledgement"]["audience"] == "customer"
    assert by_name["agent_digest"]["audience"] == "agent"
