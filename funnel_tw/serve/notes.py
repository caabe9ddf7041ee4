"""What one request's access log line and metrics need, noted by whoever serves it (the mount
router, access policies, the site) without either knowing the other."""

from __future__ import annotations

from typing import Any

NOTES = "funnel_notes"


def request_notes(request: Any) -> dict[str, Any]:
    """Facts about one request for its access log line and metrics, noted while it is served:
    ``started`` (reactor time of its head), ``mount`` (the mount path that took it),
    ``reason`` (why it was refused), ``user`` (who authenticated, set by access policies)."""
    notes: dict[str, Any] | None = request.__dict__.get(NOTES)
    if notes is None:
        notes = request.__dict__[NOTES] = {}
    return notes
