"""Fixtures for fake-vllm tests: real processes, killed as whole groups, checked for leftovers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fake_vllm.testing import FakeVllm, Spawn, start


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawn]:
    """Start fake-vllm processes; on teardown kill each whole group and assert none of it is left."""
    started: list[FakeVllm] = []

    def _start(*args: str, **options: object) -> FakeVllm:
        options.setdefault("log_dir", tmp_path_factory.mktemp("fake-vllm"))
        server = start(*args, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield _start
    for server in started:
        server.kill()
        assert server.group() == [], f"processes left in group {server.pid}"
