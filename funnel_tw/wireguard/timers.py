"""The five per-peer timers (wireguard-go's timers.go), run by the caller's clock.

Nothing here schedules anything: each peer keeps one deadline per timer (``t_*`` on the
Peer, ``None`` when not pending), the caller asks :meth:`Timers.next_deadline` and calls
:meth:`Timers.tick` with ``now`` once it has passed. The ``expired_*`` methods are
wireguard-go's functions of the same names. The hooks that arm and disarm the timers
(``timersDataSent`` and the like) are written inline in the send and receive paths.
"""

from __future__ import annotations

from .peer import Peer
from .send import Sending
from .state import Event

__all__ = ["Timers"]


class Timers(Sending):
    """Deadlines and what happens when one passes."""

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (p.next_deadline() for p in self.peers) if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        for peer in self.peers:
            t = peer.t_retransmit_handshake
            if t is not None and t <= now:
                peer.t_retransmit_handshake = None
                self._expired_retransmit_handshake(peer, now)
            t = peer.t_send_keepalive
            if t is not None and t <= now:
                peer.t_send_keepalive = None
                self._expired_send_keepalive(peer, now)
            t = peer.t_new_handshake
            if t is not None and t <= now:
                peer.t_new_handshake = None
                self._expired_new_handshake(peer, now)
            t = peer.t_zero_key_material
            if t is not None and t <= now:
                peer.t_zero_key_material = None
                self._expired_zero_key_material(peer)
            t = peer.t_persistent_keepalive
            if t is not None and t <= now:
                peer.t_persistent_keepalive = None
                self._expired_persistent_keepalive(peer, now)

    def _expired_retransmit_handshake(self, peer: Peer, now: float) -> None:
        """No answer to our initiation: try again, or give up after ``max_timer_handshakes``."""
        c = self.constants
        if peer.handshake_attempts > c.max_timer_handshakes:
            peer.t_send_keepalive = None
            if peer.staged:
                self.drops["staged_gave_up"] = self.drops.get("staged_gave_up", 0) + len(
                    peer.staged
                )
                peer.staged.clear()
            if peer.t_zero_key_material is None:
                peer.t_zero_key_material = now + c.zero_key_material_after
            self.events.append(Event("handshake-failed", peer, True))
        else:
            peer.handshake_attempts += 1
            self._send_initiation(peer, now, retry=True)

    def _expired_send_keepalive(self, peer: Peer, now: float) -> None:
        """Data came in and none went out: a keepalive, and another later if more came in."""
        self._send_keepalive(peer, now)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.t_send_keepalive = now + self.constants.keepalive_timeout

    def _expired_new_handshake(self, peer: Peer, now: float) -> None:
        """We sent data and heard nothing back since: perhaps the session is dead, rekey."""
        self._send_initiation(peer, now, retry=False)

    def _expired_zero_key_material(self, peer: Peer) -> None:
        """No new session for three times ``reject_after_time``: forget every key and index."""
        self._forget_keypairs(peer.keypairs.clear())
        if peer.handshake.local_index:
            self._handshakes.pop(peer.handshake.local_index, None)
        peer.handshake.clear()
        self.events.append(Event("keys-zeroed", peer))

    def _expired_persistent_keepalive(self, peer: Peer, now: float) -> None:
        """Nothing crossed the tunnel for ``persistent_keepalive`` seconds: keep NAT state."""
        if peer.persistent_keepalive:
            self._send_keepalive(peer, now)
