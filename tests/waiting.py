"""The one deadline-polling helper of the test suite: wait on a condition, never a sleep."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.02,
               tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions of the `tolerate` types (a node restarting, say) count as "not yet". At
    the deadline: AssertionError naming `what` and the last value or exception seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except tolerate as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)
