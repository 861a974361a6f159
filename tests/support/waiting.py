"""Waiting on conditions with a deadline (never a bare sleep): the one poll loop of the tests and benches.

``wait_for(predicate, timeout, what)`` calls ``predicate`` until it returns something truthy and
returns that. On timeout it fails with ``WaitTimeout`` (an ``AssertionError``) naming what was waited
for, how long, and the last value (or error) seen. A predicate can say why it is not there yet by
returning a falsy ``Pending("2 of 5 ready")``.

Errors: an exception from the predicate counts as "not yet" (an API server restarting, an object not
created yet) when it is one of ``retry_on`` (default: any ``Exception``), and the last one is reported
on timeout. An ``AssertionError`` always fails at once: a predicate asserts what must never happen
while waiting (the run Failed, the process exited), and waiting out the timeout would only hide it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class WaitTimeout(AssertionError):
    """What was waited for did not come within the timeout."""


class Pending:
    """A falsy predicate result that says why the wait is not over (shown on timeout)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.detail


def _retryable(e: BaseException, retry_on: RetryOn) -> bool:
    if isinstance(e, AssertionError):
        return False
    if isinstance(retry_on, tuple):
        return isinstance(e, retry_on)
    return retry_on(e)


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    *,
    retry_on: RetryOn = (Exception,),
    progress: Callable[[T | None, float], None] | None = None,
    progress_every: float = 10.0,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    Fails with ``WaitTimeout`` after ``timeout`` seconds. ``retry_on``: the exceptions (types, or a
    test on the exception) that count as "not yet"; any other exception, and any ``AssertionError``,
    propagates at once. ``progress(last, elapsed)``, when given, is called every ``progress_every``
    seconds while waiting (long waits in the benches say how far they got).
    """
    started = time.monotonic()
    deadline = started + timeout
    last_report = started
    last: T | None = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = predicate()
            last_exc = None
            if last:
                return last
        except Exception as e:
            if not _retryable(e, retry_on):
                raise
            last_exc = e
        now = time.monotonic()
        if now >= deadline:
            seen = f"last error: {last_exc!r}" if last_exc is not None else f"last value: {last!r}"
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; {seen}")
        if progress is not None and now - last_report >= progress_every:
            last_report = now
            progress(last, now - started)
        time.sleep(min(interval, max(0.0, deadline - now)))


def wait_until(
    fn: Callable[[], T], timeout: float = 30.0, message: str = "condition", interval: float = 0.1
) -> T:
    """``wait_for`` under its former name and keywords (``message`` for ``what``)."""
    return wait_for(fn, timeout, message, interval)


def retrying(op: Callable[[], T], timeout: float, what: str, retry_on: RetryOn, interval: float = 0.5) -> T:
    """``op()``'s result, the call repeated while it raises one of ``retry_on`` (a restarting API
    server), for at most ``timeout`` seconds."""
    return wait_for(lambda: (op(),), timeout, what, interval, retry_on=retry_on)[0]
