"""Argument types of the ``feynman`` command: each refuses a bad value with one line in the user's terms."""

from __future__ import annotations

import argparse
from datetime import date


class UsageError(ValueError):
    """A one-line problem with what the user asked for."""


def _symbols_arg(text: str) -> str:
    from quant.schema import is_valid_symbol

    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    bad = [s for s in symbols if not is_valid_symbol(s)]
    if not symbols or bad:
        raise argparse.ArgumentTypeError(f"invalid symbols: {', '.join(bad) or text!r}")
    return ",".join(symbols)


def _whole_number(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


MAX_DAYS = 3650  # ~14 years of sessions; the simulator and calendar cover 2006-12 on, daily partitions 2008 on
MAX_SEED = 2**32 - 1  # the simulator takes any int >= 0; one range for `run`, `live` and FEYNMAN_SEED
MAX_RETENTION_DAYS = 36_500  # 100 years; larger counts overflow the date arithmetic ('forever' keeps a table hot)
EARLIEST_DAY = date(1990, 1, 1)  # before any data Feynman can hold (archive --as-of)


def _today_utc() -> date:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).date()


def _first_partition() -> date:
    """The first daily partition (FEYNMAN_PARTITIONS_START, default resources.env_config.DEFAULT_PARTITIONS_START).
    A bad value is left for check_environment to report (it names the variable); the default is used meanwhile."""
    from resources.env_config import DEFAULT_PARTITIONS_START, EnvConfigError, env_date

    try:
        return date.fromisoformat(env_date("FEYNMAN_PARTITIONS_START", DEFAULT_PARTITIONS_START))
    except EnvConfigError:
        return date.fromisoformat(DEFAULT_PARTITIONS_START)


def _days_arg(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DAYS} sessions, got {value}")
    return value


def _bounded_date(text: str, lowest: date, low_what: str) -> date:
    day = _date_arg(text)
    today = _today_utc()
    if not lowest <= day <= today:
        raise argparse.ArgumentTypeError(f"must be between {lowest} ({low_what}) and {today} (today, UTC), got {day}")
    return day


def _partition_date_arg(text: str) -> date:
    """A day that has a daily partition: from FEYNMAN_PARTITIONS_START to today (UTC)."""
    return _bounded_date(text, _first_partition(), "the first daily partition, FEYNMAN_PARTITIONS_START")


def _as_of_arg(text: str) -> date:
    """archive --as-of: not in the future (that would archive rows retention still keeps hot)."""
    return _bounded_date(text, EARLIEST_DAY, "the earliest day accepted")


def _seed_arg(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:  # the words argparse uses for type=int, with the range
        raise argparse.ArgumentTypeError(f"invalid int value: {text[:40]!r} (a whole number from 0 to "
                                         f"{MAX_SEED})") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED} (2**32-1), got {text[:40]}")
    return value


def _retention_arg(text: str) -> str:
    """``ticks=7,bars_1m=365,signals=forever``: checked now with the archiver's own parser; the text is
    passed on unchanged."""
    from quant.retention import RetentionConfigError, parse_retention

    if len(text) > 2000:
        raise argparse.ArgumentTypeError("is too long (at most 2000 characters)")
    try:
        parsed = parse_retention(text)
    except RetentionConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    too_long = {table: days for table, days in parsed.items() if days is not None and days > MAX_RETENTION_DAYS}
    if too_long:
        table, days = next(iter(too_long.items()))
        shown = str(days) if len(str(days)) <= 20 else f"{str(days)[:20]}..."
        raise argparse.ArgumentTypeError(f"retention for {table} must be at most {MAX_RETENTION_DAYS} days (use "
                                         f"'forever' to keep it hot), got {shown}")
    return text


def _date_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _tz_arg(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone: {text!r}") from None
    return text
