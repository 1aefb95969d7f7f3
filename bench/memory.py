"""Peak RSS of a worker with large messages in the spool (issue 7 #10, issue 9).

Run by hand: `.venv/bin/python bench/memory.py --messages 5 --size-mb 15.8`.
The messages are stored by one process; a fresh process then processes them
as a worker does (the heap set up as `maildesk` sets it, no migration run) and
reports its own peak RSS, so the figure is the worker's alone.

`--serve` instead runs `maildesk serve` with one worker process, sends the
messages over SMTP and reports the peak RSS of serve and of its worker;
`--database URL` points either mode at an empty database instead of a new SQLite
file (`postgresql+psycopg://postgres@127.0.0.1:5432/empty`; `--pg` makes an empty
schema in the test database, as `bench/pgschema.py` does, and drops it after).
`--dkim` signs each message (as most large mail from a real provider is) and
serves the key from dnsmasq, so the worker verifies the signature. `--agents N`
configures N agents: each is notified of a new ticket with the customer's
attachments. The worker then sends what it queued (to a Maildir), as a worker does;
`--relay` sends it over SMTP instead, to aiosmtpd's Sink in a process of its own (the
transport production uses). `--sign` DKIM-signs our own mail. `--imap` instead
measures the IMAP poller alone, fetching the messages from a real Dovecot.
`--serve --logins N` has N clients fail a portal login at once (each password check
is argon2id's 64 MiB); `--serve --downloads N` then logs the customer in to the portal
and has N clients download the first message's attachment at once, each reading about
6 MB/s. Serve's RSS is sampled while they run.
`--uuencode` sends the attachment uuencoded (`Content-Transfer-Encoding: x-uuencode`,
as some older mail clients write a file) instead of in base64. `--forwarded N` sends
the mail forwarded N times, each forward attaching the one before as message/rfc822;
the whole stays about `--size-mb`. `--eightbit` attaches a log file as text in 8-bit
UTF-8 (`Content-Transfer-Encoding: 8bit`) instead; `--eightbit body` pastes it into
the mail's text.
"""

from __future__ import annotations

import argparse
import binascii
import html
import http.cookiejar
import os
import re
import resource
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from email.message import EmailMessage
from pathlib import Path

import common
import pgschema
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from maildesk import config, heap, language
from maildesk.inbound.store import Envelope
from maildesk.services import Services, build


def services(
    folder: Path,
    migrate: bool = True,
    dns: str = "",
    agents: int = 0,
    database: str = "",
    sign: bool = False,
    relay: str = "",
) -> Services:
    trust = {"verify_dkim": True, "dns_servers": [dns]} if dns else {"verify_dkim": False}
    outbound = {"url": relay or f"maildir:{folder / 'outbox'}"}
    if sign:  # our own mail DKIM-signed, as a production desk's is
        outbound |= {"dkim_selector": "desk", "dkim_key": str(common.signing_key(folder))}
    settings = config.from_mapping(
        {
            "support": {"address": "support@example.test", "language": "en"},
            "database": {"url": database or f"sqlite:///{folder / 'maildesk.db'}"},
            "web": {"secret_key": "bench"},
            "outbound": outbound,
            "trust": trust,
            "agents": {"addresses": [f"agent{n}@example.test" for n in range(agents)]},
            # Each agent told of every new ticket, however many one sender opens.
            "limits": common.every_notice(),
        },
        base_dir=folder,
    )
    built = build(settings)
    if migrate:  # what `maildesk init` does: the schema, and the language model kept
        built.prepare()
        settings.state_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        language.warm(settings.state_folder)
    return built


# A customer's sentence with no Content-Language: the worker guesses its language,
# as it would for most real mail, and so loads the language model (16 MB of RSS with
# numpy; a child process derives it first when the state folder has none).
SENTENCE = (
    "Dobrý den, v příloze posílám logy z tiskárny, která od včerejška tiskne jen prázdné stránky."
)
# Too short to judge (language.MIN_LETTERS): the model is never loaded.
SHORT = "Logs attached."


def big_mail(
    number: int,
    size_mb: float,
    text: str = SENTENCE,
    uuencode: bool = False,
    forwarded: int = 0,
    eightbit: str = "",
) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"customer{number}@customer.test"
    mail["To"] = "support@example.test"
    mail["Subject"] = f"Logs {number}"
    mail["Message-ID"] = f"<big{number}@customer.test>"
    mail.set_content(text)
    if uuencode:  # 45 bytes a 62-byte line, as GNU uuencode writes them
        data = os.urandom(int(size_mb * 1024 * 1024 * 45 / 62))
        lines = (
            binascii.b2a_uu(data[at : at + 45], backtick=True) for at in range(0, len(data), 45)
        )
        mail.add_attachment(
            b"", maintype="application", subtype="octet-stream", filename="logs.bin"
        )
        mail.get_payload()[1].replace_header("Content-Transfer-Encoding", "x-uuencode")
        mail.get_payload()[1].set_payload("begin 644 logs.bin\n{lines}`\nend\n")
        raw = mail.as_bytes().replace(b"{lines}", b"".join(lines))
    elif eightbit:  # a log file as 8-bit UTF-8 text, as mail clients attach text
        line = "2026-12-03 10:00:%02d tiskárna: stránka %07d prázdná, žádný toner\n"
        per_line = len((line % (0, 0)).encode())
        lines = (line % (n % 60, n) for n in range(int(size_mb * 1024 * 1024 / per_line)))
        if eightbit == "body":  # pasted into the mail instead
            mail.set_content(text + "\n" + "".join(lines), cte="8bit")
        else:
            mail.add_attachment("".join(lines), subtype="plain", cte="8bit", filename="logs.txt")
        raw = mail.as_bytes()
    else:
        data = os.urandom(int(size_mb * 1024 * 1024 * 3 / 4))  # base64 makes it size_mb
        mail.add_attachment(
            data, maintype="application", subtype="octet-stream", filename="logs.bin"
        )
        raw = mail.as_bytes()
    for depth in range(forwarded):  # each forward attaches the mail before it
        head = (
            f"From: customer{number}@customer.test\nTo: support@example.test\n"
            f"Subject: Fwd: Logs {number}\nMessage-ID: <fwd{depth}.{number}@customer.test>\n"
            f"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=fwd{depth}\n\n"
            f"--fwd{depth}\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n{text}\n--fwd{depth}\n"
            "Content-Type: message/rfc822\n"
            "Content-Disposition: attachment; filename=fwd.eml\n\n"
        )
        raw = head.encode() + raw + f"\n--fwd{depth}--\n".encode()
    return raw


def peak_mb() -> float:
    """This process's peak RSS (VmHWM): ru_maxrss would also count the parent's
    memory at fork, which Linux carries across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_kinds() -> str:
    """RSS now, split: private memory, and pages of mapped files (libraries), which the
    kernel can drop and read again."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            values[name] = int(value.split()[0]) / 1024 if name.startswith("Rss") else 0
    return f"{values['RssAnon']:.0f} MB private, {values['RssFile']:.0f} MB of mapped files"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--size-mb", type=float, default=15.8)
    parser.add_argument("--serve", action="store_true", help="through maildesk serve and SMTP")
    parser.add_argument(
        "--downloads", type=int, default=0, help="with --serve: portal downloads at once"
    )
    parser.add_argument(
        "--logins", type=int, default=0, help="with --serve: failed portal logins at once"
    )
    parser.add_argument("--database", default="", help="an empty database's URL (else SQLite)")
    parser.add_argument("--pg", action="store_true", help="in a fresh schema of the test database")
    parser.add_argument("--dkim", action="store_true", help="DKIM-signed, verified by the worker")
    parser.add_argument("--agents", type=int, default=0, help="agents notified with attachments")
    parser.add_argument("--sign", action="store_true", help="our own mail DKIM-signed")
    parser.add_argument(
        "--relay", action="store_true", help="send over SMTP to a sink of its own, not a Maildir"
    )
    parser.add_argument("--relay-url", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--imap", action="store_true", help="the IMAP poller alone, fetching from a Dovecot"
    )
    parser.add_argument(
        "--short", action="store_true", help="a body too short to guess its language from"
    )
    parser.add_argument(
        "--uuencode", action="store_true", help="the attachment uuencoded, not in base64"
    )
    parser.add_argument(
        "--forwarded", type=int, default=0, help="the mail forwarded this many times, nested"
    )
    parser.add_argument(
        "--eightbit",
        nargs="?",
        const="file",
        default="",
        choices=["file", "body"],
        help="a log in 8-bit UTF-8: attached as a text file, or (body) as the mail's text",
    )
    parser.add_argument("--process", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--dns", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pg:
        with pgschema.fresh_schema(pgschema.DEFAULT_URL, "memory") as url:
            args.database = url
            run(args)
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    if args.imap:
        through_imap(args.messages, args.size_mb)
        return
    if args.serve:
        through_serve(args.messages, args.size_mb, args.database, args.downloads, args.logins)
        return
    if args.process:
        heap.give_back_large_buffers()
        desk = services(
            Path(args.process),
            migrate=False,
            dns=args.dns,
            agents=args.agents,
            database=args.database,
            sign=args.sign,
            relay=args.relay_url,
        )
        desk.processor.warm_up()  # as a worker does when it starts
        ready = peak_mb()
        processed = desk.drain_inbound()
        after_processing = peak_mb()
        sent = desk.sender().send_due()
        print(
            f"worker: peak RSS {ready:.0f} MB before the first message, "
            f"{after_processing:.0f} MB after processing {processed}, "
            f"{peak_mb():.0f} MB after sending {sent}; "
            f"resident at the end: {resident_kinds()}"
        )
        return
    folder = Path(tempfile.mkdtemp(prefix="maildesk-memory-"))
    key = None
    if args.dkim:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.dns_server import make_key

        key = make_key(folder, "customer.test")
    desk = services(folder, agents=args.agents, database=args.database)
    for number in range(args.messages):
        text = SHORT if args.short else SENTENCE
        mail = big_mail(number, args.size_mb, text, args.uuencode, args.forwarded, args.eightbit)
        mail = mail.replace(b"\n", b"\r\n")
        if key is not None:
            mail = key.sign(mail)
        desk.store.put(mail, Envelope("smtp", "c@customer.test", ("support@example.test",)))
    desk.db.dispose()
    print(f"{args.messages} messages of {args.size_mb} MB stored in {folder}")
    worker = [sys.executable, __file__, "--process", str(folder), "--agents", str(args.agents)]
    worker += ["--sign"] if args.sign else []
    worker += ["--database", args.database] if args.database else []
    with ExitStack() as stack:
        if args.relay:
            worker += ["--relay-url", f"smtp://127.0.0.1:{stack.enter_context(smtp_sink())}"]
        if key is not None:
            from tests.dns_server import dns_server

            address = stack.enter_context(dns_server({key.record_name: key.record}))
            worker += ["--dns", address]
        subprocess.run(worker, check=True)


_POLLER = """
import pickle, sys
from maildesk import heap
from maildesk.inbound.imap import ImapPoller
heap.give_back_large_buffers()
settings = pickle.loads(sys.stdin.buffer.read())
def peak():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM"))
before, sizes = peak(), []
poller = ImapPoller(settings, lambda raw: sizes.append(len(raw)))
poller.poll_once()
poller.close()
print(f"IMAP poller: peak RSS {before:.0f} MB before, {peak():.0f} MB after fetching "
      f"{len(sizes)} messages of {sum(sizes) / 1e6:.1f} MB in all (nothing stored)")
"""


def through_imap(messages: int, size_mb: float) -> None:
    """The poller (a thread of serve) in a process of its own, fetching from a real
    Dovecot (tests/dovecot.py) into a store that keeps nothing."""
    import pickle

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dovecot import Dovecot

    with Dovecot() as server:
        for number in range(messages):
            server.append("INBOX", big_mail(number, size_mb).replace(b"\n", b"\r\n"))
        settings = pickle.dumps(server.settings(idle=False))
        subprocess.run([sys.executable, "-c", _POLLER], input=settings, check=True)


@contextmanager
def smtp_sink() -> Iterator[int]:
    """aiosmtpd's own Sink handler (it keeps nothing) in a process of its own, on a free
    port: the relay a worker sends to, as in production."""
    port = free_port()
    sink = [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink"]
    relay = subprocess.Popen([*sink, "-s", str(1 << 30), "-l", f"127.0.0.1:{port}"])
    try:
        common.wait_for(lambda: listening(port), 10, "the SMTP sink")
        yield port
    finally:
        relay.terminate()
        relay.wait(10)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def through_serve(
    messages: int, size_mb: float, database: str = "", downloads: int = 0, logins: int = 0
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="maildesk-memory-serve-"))
    database = database or f"sqlite:///{folder / 'maildesk.db'}"
    smtp_port, web_port = free_port(), free_port()
    (folder / "maildesk.toml").write_text(
        f"""
[support]
address = "support@example.test"
language = "en"
[database]
url = "{database}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
max_message_size = {int((size_mb + 2) * 1024 * 1024)}
[web]
host = "127.0.0.1"
port = {web_port}
secret_key = "bench-memory-{os.urandom(16).hex()}"
[outbound]
url = "maildir:{folder / "outbox"}"
[templates]
path = "{Path(__file__).resolve().parents[1] / "templates"}"
[trust]
verify_dkim = false
[workers]
count = 1
"""
    )
    command = [sys.executable, "-m", "maildesk", "--config", str(folder / "maildesk.toml")]
    subprocess.run([*command, "init"], check=True, capture_output=True)
    with open(folder / "serve.log", "wb") as log:
        serve = subprocess.Popen([*command, "serve"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        idle = hwm_mb(serve.pid)
        for number in range(messages):
            mail = big_mail(number, size_mb).replace(b"\n", b"\r\n")
            with smtplib.SMTP("127.0.0.1", smtp_port) as client:
                client.sendmail("c@customer.test", ["support@example.test"], mail)
        deadline = time.monotonic() + 300
        # Done, not "no longer pending": on SQLite accepted mail waits in the landing
        # file, and reaches the inbound table only when a worker claims it.
        done = text("SELECT count(*) FROM inbound WHERE state = 'done'")
        engine = create_engine(database, poolclass=NullPool)
        while True:
            with engine.connect() as db:
                if db.execute(done).scalar() >= messages:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("messages not processed after 300 s")
            time.sleep(0.5)
        # Read at the end: the workers may start after the listener does.
        children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
        workers = ", ".join(f"{hwm_mb(int(pid)):.0f} MB" for pid in children)
        print(
            f"{messages} messages of {size_mb} MB over SMTP: peak RSS of serve "
            f"{hwm_mb(serve.pid):.0f} MB ({idle:.0f} MB before), of its worker {workers}"
        )
        if logins:
            refused = while_sampling(serve.pid, lambda: failed_logins_at_once(web_port, logins))
            print(f"{logins} failed portal logins at once ({refused[0]} refused): {refused[1]}")
        if downloads:
            # The login's password check (argon2id, 64 MiB, freed after) is a peak of its
            # own: serve's RSS is sampled while the downloads run instead.
            fetch = logged_in(folder / "maildesk.toml", web_port)
            got = while_sampling(serve.pid, lambda: download_at_once(fetch, downloads))
            print(
                f"{downloads} portal downloads of the attachment at once "
                f"({got[0] / 1e6:.1f} MB each): {got[1]}"
            )
    finally:
        serve.terminate()
        serve.wait(60)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def sampling_rss(pid: int) -> Iterator[list[float]]:
    """The most RSS `pid` had while the block ran, sampled every 5 ms ([0] after it)."""
    import threading

    most = [rss_mb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            most[0] = max(most[0], rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield most
    finally:
        done.set()
        sampler.join()


def while_sampling(pid: int, work: Callable[[], int]) -> tuple[int, str]:
    """What `work` returns, and the RSS `pid` had at most while it ran (and before)."""
    before = rss_mb(pid)
    with sampling_rss(pid) as most:
        result = work()
    return result, f"serve's RSS at most {most[0]:.0f} MB while they ran ({before:.0f} MB before)"


def portal_login(web_port: int, email: str, password: str) -> urllib.request.OpenerDirector:
    """A browser (cookies kept) that posted the portal's login form; urllib's HTTPError
    if the portal refused it (400: wrong)."""
    base = f"http://127.0.0.1:{web_port}"
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = opener.open(base + "/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert token is not None, "no login form"
    form = {"csrf_token": html.unescape(token.group(1)), "email": email, "password": password}
    opener.open(base + "/login", urllib.parse.urlencode(form).encode()).read()
    return opener


def logged_in(config_path: Path, web_port: int) -> Callable[[], int]:
    """Log the first message's sender in to the portal; returns a download of ticket 1's
    attachment (the bytes it read)."""
    from maildesk.tickets.service import Tickets

    email, password = "customer0@customer.test", "correct horse battery staple"
    desk = build(config.load(config_path))
    with desk.db.transaction() as session:
        person = Tickets(session).person(email, "", desk.clock.now())
        desk.accounts(session).set_password(person, password)
    desk.db.dispose()
    opener = portal_login(web_port, email, password)
    base = f"http://127.0.0.1:{web_port}"
    ticket = opener.open(base + "/tickets/1").read().decode()
    link = re.search(r'"(/tickets/1/attachments/[^"]+)"', ticket)
    assert link is not None, "no attachment link on ticket 1"
    url = base + link.group(1)

    def download() -> int:
        # At about 6 MB/s, as a client on a real network reads: what serve holds for a
        # download is what it has not sent yet.
        total = 0
        with opener.open(url, timeout=300) as response:
            while piece := response.read(1 << 16):
                total += len(piece)
                time.sleep(0.01)
        return total

    return download


def failed_logins_at_once(web_port: int, clients: int) -> int:
    """`clients` logins with a wrong password at once, each for an address of its own
    (as a guesser spreads them); returns how many were refused as wrong."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(number: int) -> int:
        try:
            portal_login(web_port, f"guess{number}@customer.test", "not the password")
        except urllib.error.HTTPError as refused:
            return int(refused.code == 400)
        return 0

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(attempt, range(clients)))


def download_at_once(download: Callable[[], int], clients: int) -> int:
    """`download` by `clients` threads at once; the bytes of one (all read as many)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(clients) as pool:
        sizes = set(pool.map(lambda _: download(), range(clients)))
    assert len(sizes) == 1, f"downloads of different lengths: {sizes}"
    return sizes.pop()


if __name__ == "__main__":
    main()
