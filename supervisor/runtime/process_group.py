"""The process group of a run: signal it, see when it is gone, stop one a previous supervisor left behind.

Used by `supervisor.runtime.process` (a run's own group) and at start-up for the runs of an earlier supervisor.

- "Gone" means no process of the group is alive. Each live member is watched through its own pidfd, so the
  last death is seen at once rather than at the next poll; a timer backs that up for what a pidfd cannot
  show (a process that joins the group after the scan). Zombies count as gone: they hold no memory or GPU, and
  orphans are reaped by init (or a subreaper), never by us. We deliberately do not make the supervisor a
  child subreaper (PR_SET_CHILD_SUBREAPER): it would make every orphan of the whole process ours to reap,
  and reaping with waitpid(-1) would race the reaping of each leader, which would then see wrong exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import psutil

log = logging.getLogger(__name__)

# Every process of a run inherits this variable; it lets `stop_leftover` recognise an orphaned group whose
# leader is already gone, and lets an operator see which model a process belongs to (`ps e`).
RUN_MARKER_ENV = "LLM_SUPERVISOR_RUN"

# psutil derives create_time from boot time plus start ticks; boot time can move by up to a second when the
# wall clock is adjusted, so two readings of the same process may differ slightly.
_CREATE_TIME_TOLERANCE = 1.0

# The group is scanned again whenever a watched member dies. Between deaths a scan is also due after a while,
# for what no pidfd shows: a process that joined the group after the last scan. Where a member could not be
# watched (no pidfd support) the scans start fast and back off, which keeps quick exits quick and long stops
# cheap; a scan costs well under a millisecond (one getpgid syscall per pid).
_GONE_POLL_FIRST = 0.005
_GONE_POLL_MAX = 0.05
_GONE_RESCAN_WATCHED = 0.5


def run_marker(model_id: str, run_number: int) -> str:
    """The value of RUN_MARKER_ENV in every process of one run."""
    return f"{model_id}:{run_number}"


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to every process of the group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def live_group_members(pgid: int) -> list[int]:
    """Pids of the group's processes that are not zombies."""
    try:
        os.killpg(pgid, 0)  # one syscall answers the common case: nothing at all is left
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # a member belongs to another user; fall through to the scan
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


async def wait_group_gone(pgid: int) -> None:
    """Return once no live process of the group remains (bound it with `asyncio.timeout`)."""
    interval = _GONE_POLL_FIRST
    while members := live_group_members(pgid):
        one_exited = await _until_one_exits(members, interval)
        # After a death the next one may follow at once; while nothing moves, look less and less often.
        interval = _GONE_POLL_FIRST if one_exited else min(interval * 2, _GONE_POLL_MAX)


async def _until_one_exits(pids: list[int], interval: float) -> bool:
    """Wait until one of `pids` exits; True if one did. Gives up after `interval`, or after
    _GONE_RESCAN_WATCHED when every one of them is watched through a pidfd."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    pidfds: list[int] = []

    def wake() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return True  # gone (reaped) since the scan
            except OSError:  # no pidfd support: the interval bounds the wait
                continue
            pidfds.append(pidfd)
            loop.add_reader(pidfd, wake)
        timeout = _GONE_RESCAN_WATCHED if len(pidfds) == len(pids) else interval
        await asyncio.wait([exited], timeout=timeout)
        return exited.done()
    finally:
        for pidfd in pidfds:
            loop.remove_reader(pidfd)
            os.close(pidfd)


async def _group_gone_within(pgid: int, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await wait_group_gone(pgid)
    except TimeoutError:
        return False
    return True


def _parse_ident(ident: str) -> tuple[int, float]:
    pid_text, _, time_text = ident.partition(":")
    try:
        return int(pid_text), float(time_text)
    except ValueError:
        raise ValueError(f"not a process run identity ('pid:create_time'): {ident!r}") from None


def _is_our_leftover(pid: int, create_time: float, marker: str | None) -> bool:
    """True if `pid` is still the leader we started, or its group survives it with our marker."""
    try:
        leader = psutil.Process(pid)
        is_same_leader = abs(leader.create_time() - create_time) <= _CREATE_TIME_TOLERANCE
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        return False
    else:
        # A different create time: the pid now belongs to someone else, whatever its group holds.
        return is_same_leader and bool(live_group_members(pid))
    # Leader gone: an orphaned group (vLLM's engine outliving its API server) keeps the leader's pid as
    # its id, and no new group can take that id while it exists. Its members were started after the
    # leader and carry the marker we set, which rules out a group of a stranger that reused the pid.
    for member in live_group_members(pid):
        try:
            proc = psutil.Process(member)
            is_younger = proc.create_time() + _CREATE_TIME_TOLERANCE >= create_time
            found = proc.environ().get(RUN_MARKER_ENV)
            if is_younger and found is not None and (marker is None or found == marker):
                return True
        except psutil.Error:
            continue
    return False


async def stop_leftover(
    ident: str, stop_timeout: float, kill_timeout: float = 10.0, *, marker: str | None = None
) -> bool:
    """Stop the process group of a run a previous supervisor started, if it is still there.

    SIGTERM the group, wait up to `stop_timeout` for it to go, then SIGKILL and wait up to `kill_timeout`
    (a process stuck in the kernel, e.g. in a GPU driver call, can outlive SIGKILL for a while; we then log
    and give up rather than hang). Returns True if something was stopped. A pid now used by an unrelated
    process (different create time) is never signalled; an orphaned group whose leader is gone counts only
    if its members carry the run's `marker` ("model:run", see run_marker), when one is given.
    """
    pid, create_time = _parse_ident(ident)
    if not await asyncio.to_thread(_is_our_leftover, pid, create_time, marker):
        return False
    log.info("stopping leftover process group %d (run %s)", pid, ident)
    signal_group(pid, signal.SIGTERM)
    if await _group_gone_within(pid, stop_timeout):
        return True
    signal_group(pid, signal.SIGKILL)
    if not await _group_gone_within(pid, kill_timeout):
        log.warning("process group %d still has live members %s after SIGKILL", pid, live_group_members(pid))
    return True
