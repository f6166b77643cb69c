"""Alerts: one row in the warehouse ``alerts`` table, one message on the Redis ``alerts`` channel
and, when ``FEYNMAN_ALERT_WEBHOOK`` is set, one JSON POST to that URL.

Callers raise an alert where they detect the condition (:func:`raise_alert`); the seed kinds are
listed in :data:`ALERT_KINDS`. Raising an alert never raises: a delivery that fails (warehouse
locked, Redis down, webhook refusing) is logged and reported in :class:`AlertOutcome.errors`, and
the other deliveries still happen, so an alert about a broken warehouse still reaches Redis and
the webhook.

``dedup_key`` makes an alert idempotent: the ``alert_id`` is a hash of (kind, dedup_key), and an
alert whose id is already in the table is not delivered again (a micro-batch window that is re-run
must not page twice for the same regime change).

The webhook URL often carries a token, so it is read through ``dg.EnvVar`` (the Dagster UI shows
the variable name, not the value), kept out of ``repr`` and never written to a log or a message.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

log = logging.getLogger(__name__)

WEBHOOK_ENV = "FEYNMAN_ALERT_WEBHOOK"
SEVERITIES = ("info", "warning", "critical")
ALERT_KINDS = {
    "critical_regime": "a symbol entered the Critical regime (Hill alpha < 2)",
    "no_data": "no trades on the live stream for too long while the exchange is in session",
    "warehouse_write_failed": "a write to the DuckDB warehouse failed",
    "forecast_latency": "forecast latency per series above its budget",
    "asset_check_failed": "a Dagster asset check failed",
    "run_failed": "a Dagster run failed",
    "stream_lag": "more entries of the tick stream wait unacknowledged than the limit (1,000 by default)",
    "microbatch_lag": "more closed minute windows wait for a successful micro-batch run than the limit (5)",
    "stale_bars": "a session's bars are missing when a job that needs them is due (the nightly backtest waits)",
    "stream_trimmed": "entries of the tick stream were trimmed before they were processed",
    "microbatch_gave_up": "a micro-batch window failed too often and is no longer retried",
    "redis_unavailable": "the micro-batch sensor cannot reach Redis (stream and hot state); DuckDB keeps the data",
}

ALERT_SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.Utf8,
    "ts": pl.Datetime("us", "UTC"),
    "kind": pl.Utf8,
    "severity": pl.Utf8,
    "symbol": pl.Utf8,
    "message": pl.Utf8,
    "details": pl.Utf8,
    "run_id": pl.Utf8,
}


class AlertInputError(ValueError):
    """An alert with an empty kind or message, or an unknown severity."""


@dataclass
class AlertOutcome:
    """What happened to one alert. ``delivered`` is False only for a duplicate (``dedup_key`` seen)."""

    alert: dict[str, Any]
    delivered: bool = True
    stored: bool = False
    published: bool = False
    posted: bool | None = None  # None: no webhook configured
    errors: list[str] = field(default_factory=list)


def alert_id_for(kind: str, dedup_key: str | None) -> str:
    """Stable id for (kind, dedup_key); a random one when there is no key."""
    if dedup_key is None:
        return uuid.uuid4().hex[:20]
    return hashlib.sha256(f"{kind}\x1f{dedup_key}".encode()).hexdigest()[:20]


def _build_alert(kind: str, message: str, severity: str, symbol: str | None, details: dict[str, Any] | None,
                 run_id: str | None, dedup_key: str | None, now: datetime | None) -> dict[str, Any]:
    if not kind or not str(kind).strip():
        raise AlertInputError("an alert needs a kind")
    if not message or not str(message).strip():
        raise AlertInputError("an alert needs a message")
    if severity not in SEVERITIES:
        raise AlertInputError(f"alert severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    ts = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "alert_id": alert_id_for(kind, dedup_key),
        "ts": ts.isoformat(),
        "kind": kind,
        "severity": severity,
        "symbol": symbol,
        "message": " ".join(str(message).split()),
        "details": details or {},
        "run_id": run_id,
    }


def _already_stored(warehouse: Any, alert_id: str) -> bool:
    found = warehouse.query("SELECT count(*) AS n FROM alerts WHERE alert_id = ?", [alert_id])
    return bool(found["n"][0])


def _store(warehouse: Any, alert: dict[str, Any]) -> None:
    row = {**alert, "ts": datetime.fromisoformat(alert["ts"]),
           "details": json.dumps(alert["details"], default=str, sort_keys=True)}
    warehouse.append("alerts", pl.DataFrame([row], schema=ALERT_SCHEMA))


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> None:
    """POST ``payload`` as JSON to an http(s) URL; raises ``OSError`` with a message that does not contain
    the URL (urllib would also open file:// or ftp:// URLs, and raise ValueError for a malformed one)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise OSError(f"{WEBHOOK_ENV} is not an http(s) URL with a host")
    body = json.dumps(payload, default=str).encode()
    try:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "feynman-alerts"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - URL is operator config
            if not 200 <= response.status < 300:
                raise OSError(f"webhook answered HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise OSError(f"webhook answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OSError(f"webhook unreachable ({type(reason).__name__})") from None
    except (ValueError, http.client.HTTPException) as exc:  # e.g. a port that is not a number, a broken reply
        raise OSError(f"webhook request failed ({type(exc).__name__})") from None


def raise_alert(
    kind: str,
    message: str,
    *,
    severity: str = "warning",
    symbol: str | None = None,
    details: dict[str, Any] | None = None,
    run_id: str | None = None,
    dedup_key: str | None = None,
    warehouse: Any | None = None,
    hot_state: Any | None = None,
    webhook_url: str | None = None,
    timeout_s: float = 5.0,
    now: datetime | None = None,
) -> AlertOutcome:
    """Record and deliver one alert; never raises for a delivery failure (see the module docstring).

    ``warehouse``: a ``WarehouseResource`` (row in ``alerts``), ``hot_state``: a ``HotStateResource``
    (message on channel ``alerts``), ``webhook_url``: POST target. Any of them may be None.
    Raises AlertInputError only for a malformed alert (empty kind/message, unknown severity).
    """
    from resources.hot_state import CHANNEL_ALERTS

    alert = _build_alert(kind, message, severity, symbol, details, run_id, dedup_key, now)
    outcome = AlertOutcome(alert=alert)
    if warehouse is not None:
        try:
            if dedup_key is not None and _already_stored(warehouse, alert["alert_id"]):
                outcome.delivered = False
                return outcome
            _store(warehouse, alert)
            outcome.stored = True
        except Exception as exc:  # noqa: BLE001 - an alert must get out even when the warehouse is down
            outcome.errors.append(f"alerts row not written: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if hot_state is not None:
        try:
            hot_state.client().publish(CHANNEL_ALERTS, json.dumps(alert, default=str))
            outcome.published = True
        except Exception as exc:  # noqa: BLE001
            outcome.errors.append(f"alert not published to redis: {type(exc).__name__}")
    if webhook_url:
        try:
            post_webhook(webhook_url, alert, timeout_s)
            outcome.posted = True
        except OSError as exc:
            outcome.posted = False
            outcome.errors.append(f"alert webhook failed: {exc}")
    level = logging.WARNING if severity != "info" else logging.INFO
    log.log(level, "alert %s [%s] %s%s", kind, severity, alert["message"],
            f" (delivery problems: {'; '.join(outcome.errors)})" if outcome.errors else "")
    return outcome


class AlertingResource(dg.ConfigurableResource):
    """Where alerts go. ``webhook_url``: pass ``dg.EnvVar("FEYNMAN_ALERT_WEBHOOK")`` only when it is set
    (see :func:`alerting_from_env`); empty means no webhook."""

    webhook_url: str | None = Field(default=None, repr=False, description="Webhook for alert JSON (from env only).")
    timeout_s: float = Field(default=5.0, description="Webhook request timeout.")

    def raise_alert(self, kind: str, message: str, *, warehouse: Any | None = None, hot_state: Any | None = None,
                    **kwargs: Any) -> AlertOutcome:
        """:func:`raise_alert` with this resource's webhook."""
        return raise_alert(kind, message, warehouse=warehouse, hot_state=hot_state,
                           webhook_url=self.resolved_webhook(), timeout_s=self.timeout_s, **kwargs)

    def resolved_webhook(self) -> str | None:
        """The URL itself. Inside a run Dagster has already resolved the EnvVar; outside one (a
        sensor evaluated by hand, the CLI) the field still holds the EnvVar, whose str is its name."""
        value = self.webhook_url
        if isinstance(value, dg.EnvVar):
            value = value.get_value()
        return value or None

    @property
    def has_webhook(self) -> bool:
        return self.resolved_webhook() is not None


def alerting_from_env() -> AlertingResource:
    """The resource as the code location builds it: webhook through ``dg.EnvVar`` only when set."""
    import os

    return AlertingResource(webhook_url=dg.EnvVar(WEBHOOK_ENV) if os.environ.get(WEBHOOK_ENV) else None)
