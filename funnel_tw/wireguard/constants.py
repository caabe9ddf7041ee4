"""Protocol time and count limits (the WireGuard paper, section 6), overridable for tests.

Tests and the interop suite shorten ``rekey_after_time`` and friends instead of sleeping for
minutes; the daemon always uses :data:`DEFAULT`.
"""

from __future__ import annotations

import attrs

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
MAX_STAGED_PACKETS = 128
HANDSHAKE_QUEUE_SIZE = 1024
UNDER_LOAD_QUEUE_SIZE = HANDSHAKE_QUEUE_SIZE // 8  # 128 queued handshakes mean "under load"


@attrs.frozen
class Constants:
    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_attempt_time: float = 90.0
    rekey_timeout: float = 5.0
    rekey_timeout_jitter: float = 0.333
    keepalive_timeout: float = 10.0
    cookie_refresh_time: float = 120.0
    handshake_initiation_rate: float = 0.020
    under_load_after: float = 1.0
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES

    @property
    def max_timer_handshakes(self) -> int:
        return round(self.rekey_attempt_time / self.rekey_timeout)

    @property
    def zero_key_material_after(self) -> float:
        return self.reject_after_time * 3

    @property
    def new_handshake_after(self) -> float:
        return self.keepalive_timeout + self.rekey_timeout

    @property
    def last_minute_rekey_age(self) -> float:
        """Initiator keys this old, receiving data, start a handshake before they are rejected."""
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout

    @classmethod
    def shortened(cls, rekey_after_time: float) -> Constants:
        """Scale every time limit so a rekey happens every ``rekey_after_time`` seconds.

        All the limits shrink together, so their order (rekey < reject, retries well inside
        the rekey interval) is what it is at full scale. The 20 ms initiation flood rule is
        enforced by the peer and stays as it is.
        """
        d = cls()
        r = rekey_after_time / d.rekey_after_time
        return cls(
            rekey_after_time=rekey_after_time,
            reject_after_time=d.reject_after_time * r,
            rekey_attempt_time=d.rekey_attempt_time * r,
            rekey_timeout=d.rekey_timeout * r,
            rekey_timeout_jitter=d.rekey_timeout_jitter * r,
            keepalive_timeout=d.keepalive_timeout * r,
            cookie_refresh_time=d.cookie_refresh_time * r,
        )


DEFAULT = Constants()
