"""``feynman live --source sim|alpaca``: append live trades to the Redis stream ``ticks``.

The micro-batch sensor (``sensors/live``) turns the stream into one ``microbatch`` run per
closed minute; run ``make ui`` (or the Dagster daemon) with the sensor switched on to process it.

* ``--source sim``: the simulator on a clock (``--speed``: 1 = real time, 60 = a simulated minute
  per second). Without ``--start`` it plays the session in progress from now at real time, else
  the most recent completed session from its open. Trades keep their simulated timestamps.
* ``--source alpaca``: Alpaca's live trade stream (keys from ``ALPACA_API_KEY`` /
  ``ALPACA_SECRET_KEY``; ``ALPACA_STREAM_URL`` or ``--url`` replaces the websocket URL, e.g. for
  a test server; ``--feed iex|sip``). Reconnects with backoff after a dropped connection.
"""

import argparse
import math
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from resources.paths import env_or

if TYPE_CHECKING:
    from resources.hot_state import HotStateResource
    from resources.live import LiveReport

LIVE_SOURCES = ("sim", "alpaca")
TICK_STREAM = "ticks"  # resources.hot_state.TICK_STREAM, without importing Dagster to parse arguments


def _symbols(symbols: list[str] | str | None) -> list[str]:
    from quant.schema import is_valid_symbol
    from resources.live import LiveSourceError
    from resources.market_data import DEFAULT_SYMBOLS

    if symbols is None:
        symbols = env_or("FEYNMAN_SYMBOLS", DEFAULT_SYMBOLS)
    if isinstance(symbols, str):
        symbols = symbols.split(",")
    cleaned = [s.strip().upper() for s in symbols if s.strip()]
    bad = [s for s in cleaned if not is_valid_symbol(s)]
    if not cleaned or bad:
        raise LiveSourceError(f"invalid symbols: {bad or symbols!r}")
    return cleaned


def _parse_start(start: datetime | str | None) -> datetime | None:
    from resources.live import LiveSourceError

    if start is None or isinstance(start, datetime):
        return start
    try:
        parsed = datetime.fromisoformat(start)
    except ValueError:
        raise LiveSourceError(f"--start is not an ISO date-time: {start!r}") from None
    if parsed.tzinfo is None:
        raise LiveSourceError("--start needs a time zone, e.g. 2024-03-06T14:30:00+00:00")
    return parsed.astimezone(timezone.utc)


def pick_session(start: datetime | None, speed: float, now: datetime | None = None,
                 calendar: str = "XNYS") -> tuple[tuple[datetime, datetime], datetime]:
    """(session, start) to replay: the one holding ``start``; else the session in progress from now
    when playing in real time; else the most recent completed session from its open."""
    from resources.live import LiveSourceError
    from resources.market_data import recent_sessions, session_windows

    now = now or datetime.now(timezone.utc)
    if start is not None:
        for session in session_windows(start.date(), calendar):
            if session[0] <= start < session[1]:
                return session, start
        raise LiveSourceError(f"{start.isoformat()} is not inside a {calendar} session")
    if speed == 1:
        for session in session_windows(now.date(), calendar):
            if session[0] <= now < session[1]:
                return session, now
    (day,) = recent_sessions(1, end=now.date(), calendar=calendar)
    session = session_windows(day, calendar)[0]
    if session[1] > now:  # today's session is not over yet: take the previous one
        (day,) = recent_sessions(1, end=day.fromordinal(day.toordinal() - 1), calendar=calendar)
        session = session_windows(day, calendar)[0]
    return session, session[0]


def run_live(
    source: str,
    symbols: list[str] | str | None = None,
    speed: float = 1.0,
    duration: float | None = None,
    *,
    seed: int | None = None,
    start: datetime | str | None = None,
    stream: str = TICK_STREAM,
    maxlen: int | None = None,
    hot_state: "HotStateResource | None" = None,
    url: str | None = None,
    feed: str | None = None,
    stop: threading.Event | None = None,
    emit: Callable[[str], None] = print,
    min_backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
) -> "LiveReport":
    """Stream trades from ``source`` ("sim" or "alpaca") into the Redis stream until ``duration``
    wall seconds passed (None: until the session ends / Ctrl-C) or ``stop`` is set."""
    from resources.live import STREAM_MAXLEN, AlpacaTradeStream, LiveSourceError, TickStreamWriter, replay_simulated

    if source not in LIVE_SOURCES:
        raise LiveSourceError(f"unknown live source {source!r}; expected one of {', '.join(LIVE_SOURCES)}")
    if duration is not None and duration <= 0:
        raise LiveSourceError(f"duration must be positive, got {duration}")
    symbols = _symbols(symbols)
    if source == "sim":  # refuse bad arguments before starting or reaching Redis
        start = _parse_start(start)
        if not speed > 0:
            raise LiveSourceError(f"speed must be positive, got {speed}")
    if hot_state is None:
        from orchestration.resources import build_resources

        hot_state = build_resources()["hot_state"]
    writer = TickStreamWriter(hot_state.client(), stream=stream, maxlen=maxlen or STREAM_MAXLEN)
    if source == "sim":
        seed = int(env_or("FEYNMAN_SEED", "42")) if seed is None else seed
        session, begin = pick_session(_parse_start(start), speed)
        emit(f"live sim: {len(symbols)} symbols, session {session[0]:%Y-%m-%d} from {begin:%H:%M:%S} UTC at "
             f"{speed:g}x into redis stream '{stream}' ({hot_state.describe()})")
        report = replay_simulated(writer, symbols, session, start=begin, speed=speed, duration_s=duration,
                                  seed=seed, stop=stop)
    else:
        from resources.sources.alpaca import alpaca_credentials_from_env

        try:
            keys = alpaca_credentials_from_env()
        except ValueError as exc:
            raise LiveSourceError(str(exc)) from None
        url = url or os.environ.get("ALPACA_STREAM_URL") or None
        feed = feed or env_or("FEYNMAN_ALPACA_FEED", "iex")
        emit(f"live alpaca: trades of {len(symbols)} symbols ({feed} feed) into redis stream '{stream}' "
             f"({hot_state.describe()})")
        client = AlpacaTradeStream(writer, symbols, api_key=keys.api_key, secret_key=keys.secret_key,
                                   url_override=url, feed=feed, min_backoff_s=min_backoff_s,
                                   max_backoff_s=max_backoff_s)
        report = client.run(duration_s=duration, stop=stop)
    emit(report.line())
    return report


# ---- CLI wiring (the lead's orchestration/cli.py adds these two) --------------------------------
def _positive_finite(what: str) -> Callable[[str], float]:
    """An argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text[:40]!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{what} must be positive and finite (a number > 0), got {text[:40]}")
        return value

    parse.__name__ = f"{what}_arg"
    return parse


def add_live_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from orchestration.cli_args import MAX_SEED, _seed_arg

    live = sub.add_parser("live", help="append live trades (simulator or Alpaca) to the Redis stream 'ticks'")
    live.add_argument("--source", choices=list(LIVE_SOURCES), default="sim")
    live.add_argument("--symbols", default=None, help="comma-separated, e.g. SPY,QQQ (default FEYNMAN_SYMBOLS)")
    live.add_argument("--speed", type=_positive_finite("speed"), default=1.0,
                      help="sim clock speed: 1 = real time, 60 = 1 min/s")
    live.add_argument("--duration", type=_positive_finite("duration"), default=None,
                      help="stop after this many wall seconds (default: at the session close / Ctrl-C)")
    live.add_argument("--start", default=None, help="sim: ISO start inside a session (default: see docs)")
    live.add_argument("--seed", type=_seed_arg, default=None,
                      help=f"sim: simulator seed, 0-{MAX_SEED} (default FEYNMAN_SEED)")
    live.add_argument("--url", default=None, help="alpaca: websocket URL (default ALPACA_STREAM_URL / Alpaca)")
    live.add_argument("--feed", choices=["iex", "sip"], default=None, help="alpaca: data feed")
    return live


def cmd_live(args: argparse.Namespace) -> int:
    report = run_live(args.source, args.symbols, speed=args.speed, duration=args.duration, seed=args.seed,
                      start=args.start, url=args.url, feed=args.feed)
    return 0 if report.trades_sent or args.source == "alpaca" else 1
