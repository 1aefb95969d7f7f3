"""Which envelope recipients the SMTP/LMTP listener accepts.

Only the support address, its signed reply addresses (`support+t42.<hmac>@…`)
and console addresses (`support+s42a3.…`, `support+c17.…`), all checked by
`ReplyTokens.accepts`, and the configured `[support] aliases`. Every
other local part at our domain is refused at RCPT with 550 5.1.1, so a sender
learns at once that the address does not exist (no backscatter later), and a
dictionary attack on local parts gets nothing stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from maildesk.tickets.tokens import ReplyTokens


class Recipients:
    def __init__(self, support_address: str, aliases: Iterable[str], tokens: ReplyTokens) -> None:
        self._exact = {support_address.strip().lower(), *(a.strip().lower() for a in aliases)}
        self._tokens = tokens

    def accepts(self, address: str) -> bool:
        normalized = address.strip().lower()
        if normalized in self._exact:
            return True
        return self._tokens.accepts(normalized)
