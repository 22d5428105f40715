"""Driving an ASGI app in-process: its lifespan, then one request."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager


async def get_during_lifespan(app: object, path: str) -> httpx.Response:
    """Start the app's lifespan (migrations run), GET ``path``, shut it down."""
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)
