"""A real DNS server for tests: Debian's dnsmasq on a free loopback port.

It answers the TXT records a test gives it (DKIM keys, DMARC policies) and
nothing else: no upstream resolver, no /etc/hosts. Keys are real RSA keys made
with openssl, so dkimpy verifies real signatures against real DNS answers.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.resolver

from tests.conftest import free_port, wait_for

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes
    public_der_b64: str

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_der_b64}"

    def sign(
        self,
        raw: bytes,
        headers: tuple[str, ...] = (
            *("from", "to", "cc", "subject", "date"),
            *("message-id", "in-reply-to", "references"),
        ),
        length: bool = False,
    ) -> bytes:
        """`raw` with a DKIM-Signature on top whose h= is `headers` (as Gmail's; Microsoft
        365's names no To, Cc, In-Reply-To or References) and, with `length`, an l=."""
        signature = dkim.sign(
            raw,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            include_headers=[name.encode() for name in headers],
            length=length,
        )
        return signature + raw


def make_key(folder: Path, domain: str, selector: str = "sel") -> DkimKey:
    private = folder / f"{domain}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return DkimKey(domain, selector, private.read_bytes(), base64.b64encode(der).decode())


@contextmanager
def dns_server(records: Mapping[str, str]) -> Iterator[str]:
    """Serve `records` (name -> TXT text); yields "127.0.0.1:PORT"."""
    port = _free_udp_and_tcp_port()
    args = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--pid-file=",
        "--user=root",
        # Names under .test that it does not hold are NXDOMAIN, as from a real zone.
        "--local=/test/",
        "--txt-record=ready.test,ready",
    ]
    for name, text in records.items():
        # One TXT record of several <=255-byte strings, as a long DKIM key needs.
        chunks = [text[i : i + 250] for i in range(0, len(text), 250)]
        args.append(f"--txt-record={name}," + ",".join(chunks))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, 10, "dnsmasq")
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "")
        yield address
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int) -> bool:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 0.5
    try:
        resolver.resolve("ready.test.", "TXT")
    except Exception:
        return False
    return True


def _free_udp_and_tcp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
