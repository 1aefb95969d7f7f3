"""Typed keys for what the web application carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from maildesk.services import Services

SERVICES: web.AppKey[Services] = web.AppKey("services")
