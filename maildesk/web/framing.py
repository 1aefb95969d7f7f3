"""Headers every answer of the web listener carries: framed by nobody, never sniffed.

The portal's own pages set these (pages.HEADERS), but the paid-work and confirmation
pages, whose one button approves work or runs an agent's commands, did not: another
site could frame them invisibly and have a visitor click (clickjacking). Nor did
attachments, aiohttp's own error answers, the 408/415 refusals or /healthz. So they
are added here, as each answer is about to be sent (`on_response_prepare`), which
also sees the answers no handler or middleware made: an unknown path's 404, a
method's 405, a raised redirect.

- `X-Frame-Options: DENY` for older browsers, `Content-Security-Policy:
  frame-ancestors 'none'` for the rest: added to a policy an answer already has
  (an attachment's `sandbox`), unless it names its frame-ancestors itself.
- `X-Content-Type-Options: nosniff`: a browser never runs an answer as a type it
  guessed (a customer's attachment as HTML or script).
"""

from __future__ import annotations

from aiohttp import web

CSP = "Content-Security-Policy"
NO_FRAMING = "frame-ancestors 'none'"


def install(app: web.Application) -> None:
    app.on_response_prepare.append(_protect)


async def _protect(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers[CSP] = with_no_framing(headers.get(CSP, ""))


def with_no_framing(policy: str) -> str:
    """`policy` that also forbids framing, unless one of its directives already says
    who may frame it. A second CSP header would also work (browsers enforce both),
    but one policy is what an admin reading the answer expects to find."""
    directives = [d.strip() for d in policy.split(";") if d.strip()]
    if any(d.split()[0].lower() == "frame-ancestors" for d in directives):
        return policy
    return "; ".join([*directives, NO_FRAMING])
