"""Capture and crawl dates -> `YYYY-MM-DD` (UTC), or None when the value is not a date we read.

Accepted: ISO 8601 (`2024-01-15`, `2024-01-15T12:00:00+02:00`, `2024-01-15 12:00:00`), RFC 2822 /
HTTP dates (`Mon, 15 Jan 2024 10:00:00 GMT`, as in WARC/HTTP headers), `YYYYMMDD`, and the 14-digit
Wayback/CDX timestamp `YYYYMMDDhhmmss`. A value with a time zone is converted to UTC first, so a
capture at 2024-01-15T23:30-02:00 belongs to 2024-01-16. Anything else (`2024/01/15`, `15.01.2024`,
`2024-02-30`, an epoch number) is None: callers count it as an error and name the document; no
format is guessed.
"""
from __future__ import annotations

import datetime as dt
import re
from email.utils import parsedate_to_datetime

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
_DIGITS = re.compile(r"\d{8}(?:\d{6})?")


def parse_day(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    try:
        if _ISO.fullmatch(v):
            if len(v) == 10:
                return dt.date.fromisoformat(v).isoformat()
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return _utc_day(t)
        if _DIGITS.fullmatch(v):
            if len(v) == 8:
                return dt.datetime.strptime(v, "%Y%m%d").date().isoformat()
            return dt.datetime.strptime(v, "%Y%m%d%H%M%S").date().isoformat()  # Wayback times are UTC
        if "," in v or v[:1].isdigit() and " " in v:  # RFC 2822: `Mon, 15 Jan 2024 ...` or `15 Jan 2024 ...`
            return _utc_day(parsedate_to_datetime(v))
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return None


def _utc_day(t: dt.datetime) -> str:
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.date().isoformat()
