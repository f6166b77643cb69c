"""Synthetic session calendars for tests."""

from datetime import UTC, datetime, timedelta


def weekday_opens(n_sessions: int, first: datetime = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)) -> list[datetime]:
    """The opens of ``n_sessions`` consecutive weekdays from ``first`` (holidays ignored)."""
    day, days = first, []
    while len(days) < n_sessions:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days
