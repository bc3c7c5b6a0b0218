"""A real fleet of fake-vllm processes behind a real gateway on a loopback port, and a client for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from supervisor.config.schema import parse_config
from supervisor.gateway.service import Gateway
from supervisor.loop.fleet import Fleet
from tests.e2e.conftest import FAKE_VLLM, fake_model, free_port, no_leftovers, replicated, wait_until

__all__ = ["FAKE_VLLM", "fake_model", "free_port", "no_leftovers", "replicated", "wait_until"]


@dataclass
class Served:
    fleet: Fleet
    gateway: Gateway
    client: httpx.AsyncClient
    registry: CollectorRegistry
    url: str


Serve = Callable[..., Any]


@pytest.fixture
def serve(tmp_path: Path, no_leftovers: None) -> Serve:
    """`async with serve({"m": {...}}, gateway={...}) as s:` runs a fleet and its gateway, and stops both."""

    @asynccontextmanager
    async def run(
        models: dict[str, dict[str, Any]], gateway: dict[str, Any] | None = None, api_key: str | None = None
    ) -> AsyncIterator[Served]:
        settings = {"port": 0, "hold_timeout": 20, **(gateway or {})}
        config = parse_config(
            {"supervisor": {"state_dir": str(tmp_path / "state"), "gateway": settings}, "llmModels": models}, "test"
        )
        fleet = Fleet(config)
        registry = CollectorRegistry()
        assert config.supervisor.gateway is not None
        gw = Gateway(fleet, config.supervisor.gateway, registry, api_key)
        await fleet.start()
        host, port = await gw.start("127.0.0.1", 0)
        url = f"http://{host}:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield Served(fleet, gw, client, registry, url)
        finally:
            await gw.close()
            await asyncio.wait_for(fleet.shutdown(), 30)

    return run


def healthy(fleet: Fleet, model_id: str, replicas: int = 1) -> bool:
    return sum(r.is_healthy for r in fleet.status(model_id).replicas) >= replicas
