"""Settings: read once from a TOML file into frozen dataclasses, passed explicitly.

The schema is the dataclasses below. An unknown key or a value of the wrong
type is a `ConfigError` naming the key, raised at start-up rather than at the
first message that needs it. Relative paths resolve against the folder of the
file that holds them, so a config works from whatever directory it is run in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG = Path("config/maildesk.toml")
PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("cs", "en")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class SupportSettings:
    address: str = "support@example.test"
    name: str = "Support"
    base_url: str = "http://127.0.0.1:8080"
    language: str = "cs"
    # The tag put in subjects: "[#42]". Only the part before the number is configurable.
    tag_prefix: str = "#"
    # Other addresses SMTP accepts mail for (e.g. "help@example.test", or "postmaster@…"
    # when maildesk is the domain's MX). Anything else at the domain is refused at RCPT.
    aliases: tuple[str, ...] = ()

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/maildesk.db"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    lmtp: bool = False
    max_message_size: int = 25 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    enabled: bool = True
    # Refuse MAIL until the client has said STARTTLS (needs tls_cert).
    require_tls: bool = False
    # Concurrent sessions, in all and from one client address; over either: 421.
    max_sessions: int = 100
    max_sessions_per_ip: int = 10
    # Recipients of one transaction (RFC 5321 asks for at least 100); more: 452.
    max_recipients: int = 100
    # Seconds a client may take to send a whole command line or DATA line (slowloris).
    timeout: float = 60.0
    # Megabytes all sessions' unfinished DATA may hold at once; past it, 452.
    data_memory_mb: int = 256


@dataclass(frozen=True)
class ImapSettings:
    host: str = "127.0.0.1"
    port: int = 993
    ssl: bool = True
    username: str = ""
    password: str = field(default="", repr=False)
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    # Messages over [smtp] max_message_size are moved here unfetched.
    too_large_folder: str = "Too-large"
    idle: bool = True
    poll_interval: float = 60.0


@dataclass(frozen=True)
class OutboundSettings:
    url: str = "maildir:var/outbox"
    # Back-off for temporary failures: base * 2**attempt seconds, capped.
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 900.0
    # A message still undeliverable after this long is marked failed.
    give_up_hours: float = 48.0
    dkim_selector: str = ""  # DKIM signing when both are set (see outbound/dkim.py)
    dkim_key: str = ""  # path to the PEM private key


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    secret_key: str = field(default="", repr=False)
    secret_key_file: str = ""
    enabled: bool = True
    # Set-password links in invitations expire after this many days.
    invitation_days: int = 7
    # A customer's login lasts this long without a visit.
    session_days: int = 30
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For names the client; the
    # header of anyone else is ignored, so per-IP limits count real clients.
    trusted_proxies: tuple[str, ...] = ()
    # Seconds a connection may take to send a request's headers (and may sit idle).
    header_timeout: float = 10.0
    # Seconds a POST may take to send its whole body, after its headers; then 408 and closed.
    body_timeout: float = 30.0
    # Open connections at once; more are answered 503 and closed.
    max_connections: int = 256
    # Of those, from one address (an IPv6 /64) at once; trusted_proxies are not counted.
    max_connections_per_ip: int = 64


@dataclass(frozen=True)
class AgentSettings:
    addresses: tuple[str, ...] = ()
    # authserv-ids of our own MTA, whose Authentication-Results header we trust
    # (it must strip copies of that header arriving from outside, as RFC 8601 asks).
    trusted_authserv_ids: tuple[str, ...] = ()
    # "HH:MM" (local time of the server) for the daily digest; empty = off.
    digest_time: str = ""


@dataclass(frozen=True)
class TrustSettings:
    """What proves who sent a mail (see maildesk/mailauth.py and README "Trust")."""

    # authserv-ids of our own MTA, whose Authentication-Results we believe (RFC 8601).
    authserv_ids: tuple[str, ...] = ()
    # Peers (IP addresses or CIDR networks) that are that MTA: only mail relayed by
    # them to the SMTP/LMTP listener carries results we believe. Mail fetched by IMAP
    # or piped to `maildesk deliver` passed the MTA by construction.
    mta_hosts: tuple[str, ...] = ()
    # maildesk's own DKIM/DMARC check of each message.
    verify_dkim: bool = True
    # "host" or "host:port" of DNS servers for that check; empty: the system's resolver.
    dns_servers: tuple[str, ...] = ()
    dns_timeout: float = 3.0
    # Whether the acknowledgement of a ticket opened by mail that proved nothing repeats
    # its subject and its sender's display name: a stranger's words, in mail our domain
    # signs, to whatever address the stranger wrote in From (pipeline/notices.py).
    echo_unproven: bool = False


@dataclass(frozen=True)
class TemplateSettings:
    path: str = str(PACKAGE_TEMPLATES)


@dataclass(frozen=True)
class LogSettings:
    """What the daemon logs (see maildesk/logs.py): the least severe level written."""

    level: str = "info"


@dataclass(frozen=True)
class HealthSettings:
    """When /healthz and `maildesk status` say "degraded" (see maildesk/health.py)."""

    min_free_disk_mb: int = 500
    # A message the relay keeps refusing, or any unsent message, older than this.
    outbox_failing_minutes: float = 30.0
    outbox_backlog_minutes: float = 60.0
    # A received message still unprocessed after this long.
    inbound_backlog_minutes: float = 15.0
    # More messages quarantined within the last hour than this.
    quarantined_per_hour: int = 10
    # Seconds the database may take to answer the health query.
    database_timeout: float = 5.0


@dataclass(frozen=True)
class MetricsSettings:
    """GET /metrics in the Prometheus text format (see maildesk/metrics.py)."""

    enabled: bool = True
    # A listener of its own (keep it off the Internet-facing one); port 0 = the web listener.
    host: str = "127.0.0.1"
    port: int = 0
    # When set, a scrape must send "Authorization: Bearer <token>".
    bearer_token: str = field(default="", repr=False)
    bearer_token_file: str = ""
    # Without a token, the web listener's /metrics answers only these TCP peers (addresses
    # or CIDRs), and never a request a proxy relays: it answered any client that sent no
    # proxy header, so a bare nginx `proxy_pass` published it to the Internet.
    allow_without_token: tuple[str, ...] = ()


@dataclass(frozen=True)
class LifecycleSettings:
    reopen_days: int = 14
    # A resolved ticket nobody disputed closes by itself after this many days.
    autoclose_days: int = 7


@dataclass(frozen=True)
class SlaSettings:
    """Service levels (maildesk/tickets/sla.py): targets in working time, per priority."""

    enabled: bool = True
    # One working window a day, Monday to Friday, in `timezone`.
    hours: str = "08:00-17:00"
    timezone: str = "Europe/Prague"
    # ISO dates with no working hours.
    holidays: tuple[str, ...] = ()
    # (first response, resolution): "90m", "8h" or "5d" (working days).
    critical: tuple[str, ...] = ("1h", "1d")
    normal: tuple[str, ...] = ("8h", "5d")
    low: tuple[str, ...] = ("2d", "10d")
    # Priorities whose first response counts every hour of every day (nights, weekends,
    # holidays): the support policy makes a critical bug worth a phone call.
    first_response_around_the_clock: tuple[str, ...] = ("critical",)


@dataclass(frozen=True)
class LimitSettings:
    """Caps checked before any parser sees the bytes (see inbound/guard.py)."""

    max_header_bytes: int = 256 * 1024
    max_header_line: int = 32 * 1024
    max_mime_depth: int = 20
    max_mime_parts: int = 500
    # RFC 3834 politeness: automatic replies per sender per hour.
    auto_replies_per_hour: int = 5
    # ... and to everyone together, so forged senders cannot turn us into a backscatter source.
    auto_replies_per_hour_total: int = 200
    # Shares of that total (percent), so that nobody's flood silences everyone
    # (outbound/caps.py): mail that proves no sender (anyone may forge it) may use at
    # most this much of it, leaving the rest to mail that proves its sender ...
    auto_replies_unproven_percent: int = 50
    # ... and mail proven for one organizational domain (the recipient's) at most this
    # much, so a stranger signing with a domain of his own cannot use up the others'.
    auto_replies_domain_percent: int = 25
    # People a customer's Cc may make participants of one ticket (each gets every answer):
    # past it, further Cc'd addresses are left out. Agents' #cc is not capped.
    participants_per_ticket: int = 20
    # New tickets from one sender in an hour that agents are told of one by one; past it,
    # one notice says the rest are filed quietly (pipeline/quiet.py). 0: every one.
    new_ticket_notices_per_hour: int = 10
    # Customers' mails into one ticket in an hour that agents are told of one by one; past
    # it, one notice says the rest of the hour's are filed unsaid (pipeline/busy.py). 0: all.
    reply_notices_per_ticket_hour: int = 10
    # Replies one customer account may post through the portal in an hour (each becomes
    # mail to the desk and agents' notices); past it, 429 and the text given back. 0: no
    # limit. A script, or a stolen session, posted thousands.
    portal_replies_per_hour: int = 20
    # New mail is refused for now (SMTP 452) while it would leave less free space than
    # this on the SQLite database's disk: room kept for processing and sending (0: off).
    accept_min_free_mb: int = 200


@dataclass(frozen=True)
class SpamSettings:
    """How inbound spam is recognized and held (see maildesk/pipeline/spam.py)."""

    # Hold mail our own MTA marked as spam (X-Spam-Flag/X-Spam-Status, rspamd's
    # X-Spamd-Result/X-Rspamd-Action). Only when that MTA strips these headers from
    # mail arriving from outside; they are only ever believed to say "spam".
    trust_mta_headers: bool = False
    # SpamAssassin's spamd; an empty host means it is not asked.
    spamd_host: str = ""
    spamd_port: int = 783
    # Seconds for the whole exchange; a spamd that is down or slow leaves mail unscored.
    spamd_timeout: float = 10.0
    # Larger messages are not sent to spamd (spamc's own default is 500 KB).
    spamd_max_size: int = 512 * 1024
    # spamd's score at or above which a message is held.
    threshold: float = 5.0


@dataclass(frozen=True)
class RetentionSettings:
    """What `maildesk purge` and the daemon's hourly purge forget (see maildesk/retention.py)."""

    # Days a processed message's raw bytes are kept (its ticket keeps text and attachments).
    inbound_raw_days: int = 30
    # Days the body of a sent outbox mail is kept (the row, its Message-ID and ticket stay).
    outbox_body_days: int = 30
    # Days spam waits for `maildesk spam release` before it is deleted.
    spam_days: int = 30
    # Days the agents' console requests are kept (the rate limit counts one hour).
    console_days: int = 7
    # Days a used or expired confirmation is kept (its link answers "used"/"expired").
    confirmation_days: int = 7
    # Rows per transaction: SQLite's one writer is never held long.
    batch: int = 1000


def _cores() -> int:
    return max(os.cpu_count() or 1, 1)


@dataclass(frozen=True)
class WorkerSettings:
    """Who processes stored mail and sends the outbox (see maildesk/worker.py)."""

    # Worker processes `serve` starts: by default one per core. 0 = processing and
    # sending run as threads inside `serve` itself (tiny installs, tests).
    count: int = field(default_factory=_cores)
    # Seconds a claim (an inbound row being processed, an outbox row being sent) lasts
    # without renewal: a live worker renews it, a dead one's claims are due again after it.
    lease_seconds: float = 30.0
    # The nice value worker processes lower themselves to at start (0-19). Above serve's,
    # the kernel gives the process that answers SMTP the CPU first when processing keeps
    # every core busy: with accepted mail in a file of its own (SQLite's landing), a 250
    # waits for the CPU, no longer for the spool's write lock (bench/HISTORY.md).
    nice: int = 10
    # Messages a worker prepares at once, in threads (parse, spamd, DKIM/DMARC lookups),
    # ahead of the one it writes, when spamd or DKIM verification is on: their network
    # round trips overlap. 1 = one at a time.
    prepare_ahead: int = 4
    # Seconds of processing one message may take (parsing, threading, composing; not
    # spamd's or DNS's waits): past it the message is quarantined. Preparing that spends
    # twice this (plus those waits) in CPU is stuck: its worker process ends itself and
    # serve starts a new one (maildesk/watchdog.py).
    message_seconds: float = 20.0


@dataclass(frozen=True)
class Settings:
    support: SupportSettings = field(default_factory=SupportSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    imap: ImapSettings | None = None
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    web: WebSettings = field(default_factory=WebSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    templates: TemplateSettings = field(default_factory=TemplateSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    spam: SpamSettings = field(default_factory=SpamSettings)
    sla: SlaSettings = field(default_factory=SlaSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    # The folder relative paths were resolved against (the config file's own).
    base_dir: str = "."

    @property
    def sqlite_path(self) -> Path | None:
        """The database file when the database is SQLite on disk, else None."""
        if not self.database.url.startswith("sqlite"):
            return None
        path = self.database.url.split("///", 1)[1] if "///" in self.database.url else ""
        return Path(path) if path and path != ":memory:" else None

    @property
    def state_folder(self) -> Path:
        """Where maildesk keeps its own files (the secret key, the small language
        model): the SQLite database's folder; on PostgreSQL, the secret key file's
        when one is set (the service's state directory); else `var` beside the config."""
        db = self.sqlite_path
        if db:
            return db.parent
        if self.web.secret_key_file:
            return Path(self.web.secret_key_file).parent
        return Path(self.base_dir) / "var"

    @property
    def secret_key_path(self) -> Path:
        if self.web.secret_key_file:
            return Path(self.web.secret_key_file)
        return self.state_folder / "secret_key"

    def secret_key(self) -> str:
        """The signing key: from the config, else from the file `init` wrote."""
        if self.web.secret_key:
            return self.web.secret_key
        try:
            return self.secret_key_path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"no [web] secret_key and no key file at {self.secret_key_path}: "
                "run `maildesk init` first"
            ) from None


# Keys whose values are paths, resolved against the config file's folder.
_PATH_KEYS = {
    ("smtp", "tls_cert"),
    ("smtp", "tls_key"),
    ("web", "secret_key_file"),
    ("templates", "path"),
    ("outbound", "dkim_key"),
    ("metrics", "bearer_token_file"),
}


def load(path: Path | str) -> Settings:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_mapping(raw, base_dir=path.resolve().parent)


def from_mapping(raw: dict[str, Any], base_dir: Path) -> Settings:
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Settings)
    for name, value in raw.items():
        if name not in hints or name == "base_dir":
            raise ConfigError(f"unknown section [{name}]")
        cls = _section_class(hints[name])
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build_section(name, cls, value, base_dir)
    settings = Settings(**sections, base_dir=str(base_dir))
    return _finish(settings, base_dir)


def _section_class(hint: Any) -> type:
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.cast(type, hint)


def _build_section(section: str, cls: type, values: dict[str, Any], base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown key [{section}] {key}")
        kwargs[key] = _check_type(f"[{section}] {key}", hints[key], value)
        if (section, key) in _PATH_KEYS and kwargs[key]:
            kwargs[key] = str((base_dir / kwargs[key]).resolve())
    return cls(**kwargs)


def _check_type(key: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, not {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, not {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - schema bug


def _finish(settings: Settings, base_dir: Path) -> Settings:
    """Cross-field checks and path resolution inside URLs."""
    support = settings.support
    if "@" not in support.address:
        raise ConfigError(f"[support] address is not an e-mail address: {support.address!r}")
    if support.language not in LANGUAGES:
        raise ConfigError(f"[support] language must be one of {', '.join(LANGUAGES)}")
    for section, port in (("smtp", settings.smtp.port), ("web", settings.web.port)):
        if not 0 < port < 65536:
            raise ConfigError(f"[{section}] port must be between 1 and 65535, not {port}")
    if settings.imap is not None and not 0 < settings.imap.port < 65536:
        raise ConfigError(f"[imap] port must be between 1 and 65535, not {settings.imap.port}")
    if settings.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"[log] level must be one of {', '.join(LOG_LEVELS)}")
    _check_ops(settings)
    _check_sla(settings.sla)
    spam = settings.spam
    if spam.spamd_host and not (0 < spam.spamd_port < 65536 and spam.spamd_timeout > 0):
        raise ConfigError("[spam] spamd_port must be 1-65535 and spamd_timeout above 0")
    digest = settings.agents.digest_time
    if digest and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", digest):
        raise ConfigError(f"[agents] digest_time must be HH:MM, not {digest!r}")
    limits = settings.limits
    for key in ("auto_replies_unproven_percent", "auto_replies_domain_percent"):
        if not 0 <= getattr(limits, key) <= 100:
            raise ConfigError(f"[limits] {key} must be between 0 and 100")
    url = settings.database.url
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        # Only the scheme: the URL may hold a password.
        raise ConfigError(
            f"[database] url: unsupported database {scheme or url!r} "
            "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        )
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url.removeprefix("sqlite:///")
        if relative and relative != ":memory:":
            url = "sqlite:///" + str((base_dir / relative).resolve())
    outbound = settings.outbound.url
    if outbound.startswith("maildir:"):
        folder = Path(outbound.removeprefix("maildir:"))
        outbound = "maildir:" + str((base_dir / folder).resolve())
    elif urlsplit(outbound).scheme not in ("smtp", "smtps"):
        # Not the URL itself: it may hold a relay password.
        raise ConfigError("[outbound] url must be maildir:PATH, smtp://… or smtps://…")
    return dataclasses.replace(
        settings,
        database=dataclasses.replace(settings.database, url=url),
        outbound=dataclasses.replace(settings.outbound, url=outbound),
    )


def _check_ops(settings: Settings) -> None:
    """SMTP caps, TLS and the metrics listener: refused when the config loads."""
    smtp = settings.smtp
    if smtp.require_tls and not smtp.tls_cert:
        raise ConfigError("[smtp] require_tls needs [smtp] tls_cert (and tls_key)")
    for key in ("max_sessions", "max_sessions_per_ip", "max_recipients"):
        if getattr(smtp, key) < 1:
            raise ConfigError(f"[smtp] {key} must be at least 1")
    if smtp.timeout <= 0:
        raise ConfigError("[smtp] timeout must be a positive number of seconds")
    if smtp.data_memory_mb * 1024 * 1024 < smtp.max_message_size:
        raise ConfigError(
            "[smtp] data_memory_mb must hold at least one message of max_message_size"
        )
    for key in ("max_connections", "max_connections_per_ip"):
        if getattr(settings.web, key) < 1:
            raise ConfigError(f"[web] {key} must be at least 1")
    if settings.web.body_timeout <= 0:
        raise ConfigError("[web] body_timeout must be a positive number of seconds")
    metrics_port = settings.metrics.port
    if not 0 <= metrics_port < 65536:
        raise ConfigError(f"[metrics] port must be between 0 and 65535, not {metrics_port}")
    for entry in settings.metrics.allow_without_token:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"[metrics] allow_without_token: not an address or CIDR: {entry!r}"
            ) from None
    workers = settings.workers
    if workers.count < 0:
        raise ConfigError(f"[workers] count must be 0 or more, not {workers.count}")
    if workers.lease_seconds < 3:
        # Renewed three times per lease: shorter, and a busy fsync loses a live claim.
        raise ConfigError("[workers] lease_seconds must be at least 3")
    if not 0 <= workers.nice <= 19:
        raise ConfigError(f"[workers] nice must be between 0 and 19, not {workers.nice}")
    if not 1 <= workers.message_seconds <= 3600:
        raise ConfigError(
            f"[workers] message_seconds must be between 1 and 3600, not {workers.message_seconds}"
        )
    if not 1 <= workers.prepare_ahead <= 32:
        raise ConfigError(
            f"[workers] prepare_ahead must be between 1 and 32, not {workers.prepare_ahead}"
        )
    if settings.limits.new_ticket_notices_per_hour < 0:
        raise ConfigError("[limits] new_ticket_notices_per_hour must be 0 (no cap) or more")
    if settings.limits.reply_notices_per_ticket_hour < 0:
        raise ConfigError("[limits] reply_notices_per_ticket_hour must be 0 (no cap) or more")
    if settings.limits.portal_replies_per_hour < 0:
        raise ConfigError("[limits] portal_replies_per_hour must be 0 (no limit) or more")
    retention = settings.retention
    for key in ("inbound_raw_days", "outbox_body_days", "spam_days", "console_days"):
        if getattr(retention, key) < 1:
            raise ConfigError(f"[retention] {key} must be at least 1")
    if retention.confirmation_days < 0:
        raise ConfigError("[retention] confirmation_days must be 0 or more")
    if not 1 <= retention.batch <= 10_000:
        raise ConfigError("[retention] batch must be between 1 and 10000")
    for alias in settings.support.aliases:
        if "@" not in alias:
            raise ConfigError(f"[support] aliases: not an e-mail address: {alias!r}")


def _check_sla(sla: SlaSettings) -> None:
    from maildesk.tickets.sla import policy_from  # the rules live there; parse them once here

    try:
        policy_from(sla)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"[sla] {exc}") from None


def config_path(explicit: str | None) -> Path:
    """The config file to read: --config, else $MAILDESK_CONFIG, else the default."""
    return Path(explicit or os.environ.get("MAILDESK_CONFIG") or DEFAULT_CONFIG)
