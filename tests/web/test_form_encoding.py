"""A POST body in any encoding but our forms' own, from anyone, to any path.

Red team, web: every POST's form is read before its handler runs (`listener.py`, for
the body's deadline), in whatever charset its Content-Type names, on the event loop
that also takes the mail. `charset=punycode` is decoded by Python code in quadratic
time: one 600 kB POST to /paid held the loop 5.6 s, and a /healthz sent meanwhile
waited 5.1 s for its answer (SMTP and every page waited too); a 1 MB one (the most a
POST may send) longer still, and one client has 64 connections to send them on. A
multipart form is read part by part: 999 empty fields (49 kB) cost 0.2-0.3 s of the
loop each, and each of its fields may name a charset too. Our pages send only
urlencoded UTF-8.
"""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from tests.conftest import RunningDaemon
from tests.web.portal_client import PASSWORD, Client, base_url, customer

ALICE = "alice@customer.test"
FORM = "application/x-www-form-urlencoded"
# Punycode's basic part, then deltas: its decoder walks the string so far per delta.
SLOW_PUNYCODE = b"a" * 150_000 + b"-" + b"zz9a" * 37_500


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def post(daemon: RunningDaemon, path: str, content_type: str, body: bytes) -> int:
    web = daemon.services.settings.web
    connection = http.client.HTTPConnection(web.host, web.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def multipart(*parts: bytes) -> bytes:
    return b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"


@pytest.mark.parametrize("path", ["/login", "/paid", "/no-such-page"])
def test_a_form_in_a_slow_charset_is_refused_unread(daemon: RunningDaemon, path: str) -> None:
    body = b"token=" + SLOW_PUNYCODE
    assert post(daemon, path, f"{FORM}; charset=punycode", body) == 415
    assert post(daemon, path, f'{FORM}; charset="PunyCode"', body) == 415


def test_a_multipart_field_in_a_slow_charset_is_refused_unread(daemon: RunningDaemon) -> None:
    field = b"Content-Disposition: form-data; name=token\r\n"
    body = multipart(field + b"Content-Type: text/plain; charset=punycode\r\n\r\n" + SLOW_PUNYCODE)
    assert post(daemon, "/paid", "multipart/form-data; boundary=b", body) == 415


def test_a_multipart_form_of_many_fields_is_refused_unread(daemon: RunningDaemon) -> None:
    body = multipart(*[b"Content-Disposition: form-data; name=a\r\n\r\n"] * 999)
    assert post(daemon, "/account/forgot", "multipart/form-data; boundary=b", body) == 415


@pytest.mark.parametrize("charset", ["", "; charset=UTF-8", "; charset=utf8"])
def test_our_own_forms_are_still_read(daemon: RunningDaemon, charset: str) -> None:
    customer(daemon.services, ALICE)
    client = Client(base_url(daemon))
    client.get("/login")
    page = client.post(
        "/login",
        {"email": ALICE, "password": PASSWORD},
        headers={"Content-Type": FORM + charset},
    )
    assert page.status == 303, page.text


@pytest.mark.parametrize("path", ["/login", "/paid", "/account/forgot"])
def test_a_form_that_is_no_utf8_is_refused_without_a_server_error(
    daemon: RunningDaemon, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are no UTF-8 in a urlencoded body (not percent-encoded): aiohttp's
    decoding raised, and anyone's POST was answered 500 with a traceback in the log."""
    assert post(daemon, path, FORM, b"token=\xed\xb3\xbf&email=\xff") == 400
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
