"""Polling for conditions that other processes make true (metrics, engine counters)."""

import time


def wait_until(predicate, timeout_s: float = 20.0, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(interval_s)
