"""When to send a request again, and how long to wait first.

Retried: connection errors, timeouts, 408, 409, 429 and every 5xx. Not retried: other 4xx
(the request itself is wrong, sending it again buys the same refusal) and a 200 whose body
is bad (that answer was paid for; it is recorded, not bought twice).

A call whose every attempt got the same error answer (status and body), from a status that
does not mean "later" (408, 409, 429, 502, 503, 504, or any answer with a ``Retry-After``),
before the endpoint has answered any query, is a request the endpoint refuses: see
``Transport`` and docs/remote.md.

The wait honours the server: ``retry-after-ms`` first, then ``Retry-After`` as seconds or
as an HTTP date, when finite, not negative and within ``cap``. Otherwise, and for failures
without a response, the wait is ``min(0.5·2^n, 8 s)`` with full jitter (n = retries so far).
"""
from __future__ import annotations

import email.utils
import math
import random
import time

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
#: statuses that say "not now" whatever their body: a timeout, a conflict (a call with the
#: same idempotency key still running), a rate limit, a gateway or an overloaded server
LATER_STATUSES = frozenset({408, 409, 429, 502, 503, 504})


def should_retry(status: int) -> bool:
    return status in RETRY_STATUSES


def says_later(status: int, headers) -> bool:
    """The answer itself says the server may answer later: a 'later' status or a Retry-After."""
    return status in LATER_STATUSES or "retry-after" in headers or "retry-after-ms" in headers


def backoff(retry: int, *, base: float = 0.5, ceiling: float = 8.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first) when the server said nothing:
    full jitter keeps many clients from retrying in step."""
    top = min(base * 2.0 ** min(retry, 64), ceiling)
    return (rng or random).uniform(top / 2, top)


def server_delay(headers, *, cap: float, now: float | None = None) -> float | None:
    """The wait the server asked for, in seconds, or None when it asked for none we should honour
    (absent, garbage, infinite, negative, or longer than ``cap``)."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None and _within(milliseconds / 1000.0, cap) is not None:
        return milliseconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is None:                                   # an HTTP date, e.g. "Wed, 21 Oct 2026 07:28:00 GMT"
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = max(when.timestamp() - (time.time() if now is None else now), 0.0)
    return _within(seconds, cap)


def retry_delay(headers, retry: int, *, cap: float, rng: random.Random | None = None) -> float:
    asked = server_delay(headers, cap=cap) if headers is not None else None
    return asked if asked is not None else backoff(retry, rng=rng)


def _number(text) -> float | None:
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _within(seconds: float, cap: float) -> float | None:
    return seconds if 0.0 <= seconds <= cap else None
