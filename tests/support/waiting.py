"""Waiting on conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_until(
    fn: Callable[[], T], timeout: float = 30.0, message: str = "condition", interval: float = 0.1
) -> T:
    """Call ``fn`` until it returns something truthy and return that; fail after ``timeout`` seconds.

    Exceptions from ``fn`` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last: T | None = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last!r}"
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {message}{detail}")
        time.sleep(interval)
