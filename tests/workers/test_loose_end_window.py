"""How far back the reconciler's sweep looks for final orders with loose ends.

Looking back six hours on every 30 s sweep cost in proportion to the orders of six hours; a sweep
now looks at the recent ones, and the whole window once when a worker process starts and then hourly.
"""

from __future__ import annotations

from activities.reconciler import (
    FULL_SWEEP_EVERY_SECONDS,
    LOOSE_END_WINDOW_SECONDS,
    RECENT_WINDOW_SECONDS,
    LooseEndWindow,
)

GRACE = 60.0


def test_the_first_sweep_of_a_process_looks_back_the_whole_window_then_at_the_recent_orders() -> None:
    window = LooseEndWindow()
    assert window.seconds(1000.0, GRACE) == LOOSE_END_WINDOW_SECONDS
    window.swept(1000.0)
    assert window.seconds(1030.0, GRACE) == RECENT_WINDOW_SECONDS
    window.swept(1030.0)
    assert window.seconds(1000.0 + FULL_SWEEP_EVERY_SECONDS - 1, GRACE) == RECENT_WINDOW_SECONDS
    assert window.seconds(1000.0 + FULL_SWEEP_EVERY_SECONDS, GRACE) == LOOSE_END_WINDOW_SECONDS


def test_a_full_sweep_that_failed_is_still_due() -> None:
    window = LooseEndWindow()
    assert window.is_full(5.0)
    # no swept(): the listing raised, the activity is retried
    assert window.seconds(35.0, GRACE) == LOOSE_END_WINDOW_SECONDS


def test_a_long_grace_widens_the_recent_window() -> None:
    window = LooseEndWindow()
    window.swept(0.0)
    assert window.seconds(30.0, 3600.0) == 4 * 3600.0
