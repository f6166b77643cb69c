"""Environment variables checked up front.

A value Feynman cannot use is refused with one line that names the variable, before any run
starts, instead of failing later inside a run (or, worse, being accepted and ignored). The
messages never repeat the value of a variable that may hold a secret (``REDIS_URL``,
``FEYNMAN_ALERT_WEBHOOK``): they name the variable and what is wrong with it.

``check_environment()`` is called by the ``feynman`` command before it does anything and by
``orchestration.resources.build_resources`` (so a bad value stops the code location from
loading with that line, rather than failing every run). Values parsed at import time
(``FEYNMAN_PARTITIONS_START``, ``FEYNMAN_MICROBATCH_*``) use :func:`env_date` and
:func:`env_number`, which give the same messages.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import date, datetime, timezone
from urllib.parse import urlsplit

SOURCES = ("sim", "files", "alpaca")
# daily partitions are the sessions of this exchange calendar (exchange_calendars names; "24/7" for crypto)
DEFAULT_CALENDAR = "XNYS"
# the first daily partition: the first session of 2024 keeps the list to recent years (the 2024-2025 real minute
# files fit); set FEYNMAN_PARTITIONS_START earlier for older history
DEFAULT_PARTITIONS_START = "2024-01-02"
ALPACA_DATA_KINDS = ("bars", "trades")
REDIS_SCHEMES = ("redis", "rediss", "unix")
WEBHOOK_SCHEMES = ("http", "https")
CRON_VARIABLES = ("FEYNMAN_BACKTEST_CRON", "FEYNMAN_ARCHIVE_CRON", "FEYNMAN_PRUNE_CRON", "FEYNMAN_AFTER_CLOSE_CRON",
                  "FEYNMAN_AFTER_CLOSE_LATE_CRON")

# variable -> (integer, minimum, strict lower bound) of the micro-batch sensor's numbers
MICROBATCH_NUMBERS: dict[str, tuple[bool, float, bool]] = {
    "FEYNMAN_MICROBATCH_INTERVAL": (True, 1, False),
    "FEYNMAN_MICROBATCH_LATENESS": (False, 0, False),
    "FEYNMAN_MICROBATCH_IDLE_CLOSE": (False, 0, True),
    "FEYNMAN_MICROBATCH_MAX_RUNS": (True, 1, False),
    "FEYNMAN_NO_DATA_ALERT_SECONDS": (False, 0, False),
}


class EnvConfigError(ValueError):
    """An environment variable holds a value Feynman cannot use (one line, names the variable)."""


def _get(name: str, environ: Mapping[str, str] | None) -> str:
    return ((os.environ if environ is None else environ).get(name) or "").strip()


def env_number(name: str, default: float, *, integer: bool = False, minimum: float | None = None,
               strictly_above: bool = False, environ: Mapping[str, str] | None = None) -> float | int:
    """The number in ``name`` (``default`` when unset or empty); refuses text, NaN/inf, fractions
    where a whole number is needed, and values below ``minimum`` (or equal, with ``strictly_above``)."""
    text = _get(name, environ)
    if not text:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value: float | int = int(text) if integer else float(text)
    except ValueError:
        raise EnvConfigError(f"{name} must be {kind}, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise EnvConfigError(f"{name} must be a finite number, got {text[:40]!r}")
    if minimum is not None and (value < minimum or (strictly_above and value == minimum)):
        bound = f"above {minimum:g}" if strictly_above else f"at least {minimum:g}"
        raise EnvConfigError(f"{name} must be {bound}, got {text[:40]!r}")
    return value


def env_date(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    """The ISO date (YYYY-MM-DD) in ``name``, not after today (UTC); ``default`` when unset."""
    text = _get(name, environ) or default
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise EnvConfigError(f"{name} must be a date (YYYY-MM-DD), got {text[:40]!r}") from None
    if day > datetime.now(timezone.utc).date():
        raise EnvConfigError(f"{name} is in the future ({day}); the first daily partition must be a past day")
    return day.isoformat()


def env_calendar(environ: Mapping[str, str] | None = None) -> str:
    """The exchange calendar in ``FEYNMAN_CALENDAR`` (default XNYS), refused unless exchange_calendars knows it."""
    name = _get("FEYNMAN_CALENDAR", environ) or DEFAULT_CALENDAR
    import exchange_calendars as xcals

    if name not in xcals.get_calendar_names(include_aliases=True):
        raise EnvConfigError(f"FEYNMAN_CALENDAR must be an exchange_calendars name (e.g. XNYS, XLON, 24/7), "
                             f"got {name[:40]!r}")
    return name


def _url_scheme(name: str, text: str, allowed: tuple[str, ...], example: str) -> None:
    # the value may carry a password or a token: the message names the variable, never the value
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        raise EnvConfigError(f"{name} is not a valid URL (expected e.g. {example})") from None
    if parts.scheme.lower() not in allowed:
        shown = parts.scheme.lower() if parts.scheme.isalnum() and len(parts.scheme) <= 10 else "none"
        raise EnvConfigError(f"{name} must be a {' / '.join(s + '://' for s in allowed)} URL, e.g. {example} "
                             f"(scheme: {shown})")
    if parts.scheme.lower() != "unix" and not parts.hostname:
        raise EnvConfigError(f"{name} has no host (expected e.g. {example})")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise EnvConfigError for the first variable whose value cannot work (see the module docstring)."""
    from quant.schema import is_valid_symbol

    source = _get("FEYNMAN_SOURCE", environ)
    if source and source not in SOURCES:
        raise EnvConfigError(f"FEYNMAN_SOURCE must be one of {', '.join(SOURCES)}, got {source[:40]!r}")
    symbols_text = _get("FEYNMAN_SYMBOLS", environ)
    if symbols_text:
        symbols = [s.strip().upper() for s in symbols_text.split(",") if s.strip()]
        bad = [s for s in symbols if not is_valid_symbol(s)]
        if bad or not symbols:
            shown = ", ".join(repr(s[:30]) for s in bad[:3]) or repr(symbols_text[:40])
            raise EnvConfigError(f"FEYNMAN_SYMBOLS holds invalid symbols: {shown} (tickers: A-Z, 0-9 and . - _ /)")
    env_number("FEYNMAN_SEED", 42, integer=True, environ=environ)
    env_date("FEYNMAN_PARTITIONS_START", DEFAULT_PARTITIONS_START, environ=environ)
    env_calendar(environ)
    data_kind = _get("FEYNMAN_ALPACA_DATA", environ)
    if data_kind and data_kind not in ALPACA_DATA_KINDS:
        raise EnvConfigError(f"FEYNMAN_ALPACA_DATA must be one of {', '.join(ALPACA_DATA_KINDS)}, "
                             f"got {data_kind[:40]!r}")
    from resources.embedder import BACKENDS as EMBED_BACKENDS  # numpy only at import

    backend = _get("FEYNMAN_EMBED_BACKEND", environ).lower()
    if backend and backend not in EMBED_BACKENDS:
        raise EnvConfigError(f"FEYNMAN_EMBED_BACKEND must be one of {', '.join(EMBED_BACKENDS)}, got {backend[:40]!r}")
    label = _get("FEYNMAN_FILES_BAR_LABEL", environ)
    if label and label not in ("start", "end"):
        raise EnvConfigError(f"FEYNMAN_FILES_BAR_LABEL must be start or end, got {label[:40]!r}")
    for name in ("FEYNMAN_FILES_TZ", "FEYNMAN_BACKTEST_TZ", "FEYNMAN_AFTER_CLOSE_TZ"):
        zone = _get(name, environ)
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise EnvConfigError(f"{name} is not a known time zone: {zone[:40]!r}") from None
    for name in CRON_VARIABLES:
        cron = _get(name, environ)
        if cron:
            from dagster._utils.schedules import is_valid_cron_string

            if not is_valid_cron_string(cron):
                raise EnvConfigError(f"{name} is not a cron expression of 5 fields (e.g. '0 3 * * *'), "
                                     f"got {cron[:40]!r}")
    redis_url = _get("REDIS_URL", environ)
    if redis_url:
        _url_scheme("REDIS_URL", redis_url, REDIS_SCHEMES, "redis://:password@127.0.0.1:6379/0")
    webhook = _get("FEYNMAN_ALERT_WEBHOOK", environ)
    if webhook:
        _url_scheme("FEYNMAN_ALERT_WEBHOOK", webhook, WEBHOOK_SCHEMES, "https://hooks.example.com/...")
    retention = _get("FEYNMAN_RETENTION", environ)
    if retention:
        from quant.retention import RetentionConfigError, parse_retention

        try:
            parse_retention(retention)
        except RetentionConfigError as exc:
            raise EnvConfigError(f"FEYNMAN_RETENTION: {exc}") from None
    for name, (integer, minimum, strict) in MICROBATCH_NUMBERS.items():
        env_number(name, 0, integer=integer, minimum=minimum, strictly_above=strict, environ=environ)
