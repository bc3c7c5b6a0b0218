"""Naming a port's holder where the kernel says little: another user's socket, a process gone or closed to us."""

from __future__ import annotations

import types

import psutil
import pytest

from supervisor.runtime import holders
from supervisor.runtime.holders import Holder, describe_process, port_holders


def _conn(port: int, pid: int | None, status: str = psutil.CONN_LISTEN) -> types.SimpleNamespace:
    return types.SimpleNamespace(laddr=types.SimpleNamespace(ip="0.0.0.0", port=port), pid=pid, status=status)


def test_another_users_socket_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root, another user's listening socket has no pid: named as a process of another user."""
    table = [_conn(8001, None), _conn(8001, None), _conn(8002, 1), _conn(8001, 1, psutil.CONN_ESTABLISHED)]
    monkeypatch.setattr(holders.psutil, "net_connections", lambda kind: table)
    found = port_holders(8001)
    assert found == [Holder(None, "unknown")]
    assert found[0].describe() == "a process of another user (run as root to see which)"


def test_a_refused_table_gives_no_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the whole table needs root, no holder is named (never a guess)."""

    def refuse(kind: str) -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(holders.psutil, "net_connections", refuse)
    assert port_holders(8001) == []


def test_a_gone_or_closed_process_is_described_without_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid that is gone, or whose command line may not be read, is still named by pid."""

    class Closed:
        def __init__(self, pid: int) -> None:
            raise psutil.AccessDenied(pid)

    assert describe_process(2**22 + 1).command == "gone"  # above Linux's largest pid
    monkeypatch.setattr(holders.psutil, "Process", Closed)
    assert describe_process(1) == Holder(1, "unknown: access denied")


def test_marker_gives_unit_and_run() -> None:
    """The run marker 'unit:run' names the unit (a replica's too) and the run."""
    assert (Holder(1, "x", "m#1:7").unit, Holder(1, "x", "m#1:7").run) == ("m#1", 7)
    assert (Holder(1, "x").unit, Holder(1, "x").run) == (None, None)
