"""The pure restart policy: which exits restart, the backoff schedule (exact values), jitter, reset, budget."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.policy import Backoff, Budget, RestartPolicy, wants_restart

DEFAULT = Backoff(initial=5, multiplier=2, cap=300, jitter=0.0, reset_after=600)


@pytest.mark.parametrize(
    ("policy", "clean", "restarts"),
    [
        (RestartPolicy.NO, False, False),
        (RestartPolicy.NO, True, False),
        (RestartPolicy.ON_FAILURE, False, True),
        (RestartPolicy.ON_FAILURE, True, False),
        (RestartPolicy.ALWAYS, False, True),
        (RestartPolicy.ALWAYS, True, True),
        (RestartPolicy.UNLESS_STOPPED, False, True),
        (RestartPolicy.UNLESS_STOPPED, True, True),
    ],
)
def test_wants_restart_per_policy(policy: RestartPolicy, clean: bool, restarts: bool) -> None:
    """Each policy restarts exactly the unrequested ends the contract says it does."""
    assert wants_restart(policy, clean=clean) is restarts


def test_policy_names_are_the_contract_names() -> None:
    """Config values map onto the enum by their contract spelling."""
    assert [p.value for p in RestartPolicy] == ["no", "on-failure", "always", "unless-stopped"]


def test_default_schedule_is_exact() -> None:
    """The defaults give 5, 10, 20, 40, 80, 160, then the 300 s cap forever."""
    assert [DEFAULT.base_delay(n) for n in range(10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]


@pytest.mark.parametrize("attempt", [64, 1100, 10**6, 10**18])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    """A model that has crashed for months still gets the cap, not an OverflowError or inf."""
    assert DEFAULT.base_delay(attempt) == 300
    assert DEFAULT.delay(attempt, random.Random(0)) == 300


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff(5e-324, 10, 1e308),  # the power overflows long before the product reaches the cap
        Backoff(1.0, 2, 1.7976931348623157e308),  # a cap at the float limit
        Backoff(1e-300, 1e300, 1e308),
    ],
)
def test_schedule_at_the_float_limits_stays_finite_and_ordered(backoff: Backoff) -> None:
    """Absurd but valid numbers never raise, never exceed the cap and never make the schedule shrink."""
    delays = [backoff.base_delay(n) for n in range(1100)]
    assert all(0 <= d <= backoff.cap for d in delays)
    assert delays == sorted(delays)
    assert delays[-1] == backoff.cap


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff(0, 2, 300), [0, 0, 0]),  # restart_delay 0: respawn at once, every time
        (Backoff(5, 2, 0), [0, 0, 0]),  # backoff_max 0 caps everything to 0
        (Backoff(500, 2, 300), [300, 300, 300]),  # a first delay above the cap is the cap
        (Backoff(300, 2, 300), [300, 300, 300]),
        (Backoff(5, 1, 300), [5, 5, 5]),  # multiplier 1: constant delay
        (Backoff(5, 0.5, 300), [5, 5, 5]),  # a multiplier below 1 never shrinks the delay
        (Backoff(0.5, 2, 1.0), [0.5, 1.0, 1.0]),
        (Backoff(1, 3, 100), [1, 3, 9]),
    ],
)
def test_base_delay_edges(backoff: Backoff, expected: list[float]) -> None:
    """Zero delays, zero caps, constant schedules and caps below the first delay give exact values."""
    assert [backoff.base_delay(n) for n in range(3)] == expected


def test_jitter_bounds_are_exact() -> None:
    """+-10 % jitter around 5 s is [4.5, 5.5]; at the cap it never goes above the cap."""
    backoff = Backoff(5, 2, 300, jitter=0.1)
    assert backoff.bounds(0) == pytest.approx((4.5, 5.5))
    assert backoff.bounds(1) == pytest.approx((9.0, 11.0))
    assert backoff.bounds(6) == pytest.approx((270.0, 300.0))


def test_jitter_is_reproducible_from_the_seed() -> None:
    """The same seed gives the same jittered schedule; another seed gives another one."""
    backoff = Backoff(5, 2, 300, jitter=0.25)
    first = [backoff.delay(n, random.Random(42)) for n in range(8)]
    again = [backoff.delay(n, random.Random(42)) for n in range(8)]
    other = [backoff.delay(n, random.Random(43)) for n in range(8)]
    assert first == again
    assert first != other
    draw = random.Random(42).uniform(-1.0, 1.0)
    assert first[0] == pytest.approx(5 * (1 + 0.25 * draw))


def test_jitter_draws_spread_over_the_band() -> None:
    """Jittered delays actually vary: over many draws both halves of the band are used."""
    backoff = Backoff(10, 2, 300, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(0, rng) for _ in range(200)]
    assert min(delays) < 7.5 < 12.5 < max(delays)
    assert all(5.0 <= d <= 15.0 for d in delays)


def test_no_jitter_draws_nothing_from_the_rng() -> None:
    """Without jitter the schedule is exact and the RNG is left untouched (other draws stay reproducible)."""
    rng = random.Random(3)
    before = rng.getstate()
    assert DEFAULT.delay(2, rng) == 20
    assert rng.getstate() == before


@pytest.mark.parametrize(
    ("healthy_for", "resets"),
    [(None, False), (0.0, False), (599.999, False), (600.0, True), (86_400.0, True)],
)
def test_backoff_resets_only_after_reset_after_healthy_seconds(healthy_for: float | None, resets: bool) -> None:
    """backoff_reset_after (600 s) of health, and not a moment less, earns a fresh schedule."""
    assert DEFAULT.should_reset(healthy_for) is resets


@pytest.mark.parametrize(
    ("budget", "times", "now", "recent"),
    [
        (Budget(3, 600), (0.0, 100.0, 500.0), 650.0, (100.0, 500.0)),
        (Budget(3, 600), (0.0, 100.0), 600.0, (100.0,)),  # exactly window-old no longer counts
        (Budget(3, 600), (0.0, 100.0), 599.999, (0.0, 100.0)),
        (Budget(3, 600), (), 10.0, ()),
        (Budget(3, None), (0.0, 1.0, 2.0), 10**9, (0.0, 1.0, 2.0)),  # null window: the whole life
        (Budget(None, 10), (0.0, 5.0), 12.0, (5.0,)),
    ],
)
def test_budget_counts_only_restarts_inside_the_window(
    budget: Budget, times: tuple[float, ...], now: float, recent: tuple[float, ...]
) -> None:
    """Restarts older than restart_window stop counting; a null window counts them for ever."""
    assert budget.recent(times, now) == recent


@pytest.mark.parametrize(
    ("budget", "times", "now", "allowed"),
    [
        (Budget(3, 600), (1.0, 2.0), 3.0, True),
        (Budget(3, 600), (1.0, 2.0, 3.0), 4.0, False),
        (Budget(3, 600), (1.0, 2.0, 3.0), 601.0, True),  # the first one left the window
        (Budget(0, 600), (), 0.0, False),  # max_restarts 0: never restart automatically
        (Budget(0, None), (), 0.0, False),
        (Budget(None, 600), tuple(float(t) for t in range(1000)), 1000.0, True),  # null: unlimited
        (Budget(2, None), (0.0, 1.0), 10**9, False),  # lifetime budget never refills
    ],
)
def test_budget_allows(budget: Budget, times: tuple[float, ...], now: float, allowed: bool) -> None:
    """The budget allows a restart while fewer than max_restarts fall inside the window."""
    assert budget.allows(times, now) is allowed


# --- properties of the schedule -------------------------------------------------------------------

initials = st.floats(min_value=0, max_value=1000, allow_nan=False)
multipliers = st.floats(min_value=1, max_value=10, allow_nan=False)
caps = st.floats(min_value=0, max_value=10_000, allow_nan=False)
jitters = st.floats(min_value=0, max_value=0.99, allow_nan=False)
attempts = st.integers(min_value=0, max_value=5_000)


@given(initial=initials, multiplier=multipliers, cap=caps, attempt=attempts)
def test_schedule_never_decreases_and_never_passes_the_cap(
    initial: float, multiplier: float, cap: float, attempt: int
) -> None:
    """Without jitter each delay is at least the one before and at most backoff_max."""
    backoff = Backoff(initial, multiplier, cap)
    here, after = backoff.base_delay(attempt), backoff.base_delay(attempt + 1)
    assert 0 <= here <= after <= max(cap, 0)
    assert math.isfinite(after)


@given(
    initial=st.floats(min_value=0.001, max_value=1000),
    multiplier=st.floats(min_value=1.01, max_value=10),
    cap=st.floats(min_value=0.001, max_value=10_000),
)
def test_schedule_reaches_the_cap(initial: float, multiplier: float, cap: float) -> None:
    """With a multiplier above 1 the schedule reaches backoff_max and stays there."""
    backoff = Backoff(initial, multiplier, cap)
    steps = math.ceil(math.log(max(cap / initial, 1.0)) / math.log(multiplier)) + 1
    assert backoff.base_delay(steps) == cap
    assert backoff.base_delay(steps + 1000) == cap


@given(initial=initials, multiplier=multipliers, attempt=st.integers(0, 60))
def test_schedule_is_the_exponential_below_the_cap(initial: float, multiplier: float, attempt: int) -> None:
    """Below the cap a delay is restart_delay * multiplier**attempt."""
    backoff = Backoff(initial, multiplier, cap=math.inf)
    assert backoff.base_delay(attempt) == pytest.approx(initial * multiplier**attempt, rel=1e-9)


@given(
    initial=initials, multiplier=multipliers, cap=caps, jitter=jitters, attempt=attempts, seed=st.integers(0, 2**32 - 1)
)
def test_jittered_delay_stays_within_bounds(
    initial: float, multiplier: float, cap: float, jitter: float, attempt: int, seed: int
) -> None:
    """A jittered delay lies within Backoff.bounds, which lie within [base*(1-j), min(cap, base*(1+j))]."""
    backoff = Backoff(initial, multiplier, cap, jitter)
    low, high = backoff.bounds(attempt)
    base = backoff.base_delay(attempt)
    assert low == pytest.approx(base * (1 - jitter))
    assert high <= max(cap, 0)
    assert 0 <= low <= backoff.delay(attempt, random.Random(seed)) <= high
