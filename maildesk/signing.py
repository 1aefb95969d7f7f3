"""Signed, expiring tokens that read the time from our clock (tests move time)."""

from __future__ import annotations

from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from maildesk.clock import Clock


def signed_serializer(secret: str, salt: str, clock: Clock) -> URLSafeTimedSerializer:
    """A URL-safe serializer whose timestamps and max_age checks use `clock`."""

    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock.now().timestamp())

    return URLSafeTimedSerializer(secret, salt=salt, signer=ClockSigner)
