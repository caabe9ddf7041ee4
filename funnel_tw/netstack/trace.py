"""An optional event log of the TCP sender, for diagnosis: why a flow is as fast as it is.

    FUNNEL_TW_TCP_TRACE=/tmp/tcp-%p.jsonl twistd -n funnel --config node.ini

With the variable set, every :class:`~funnel_tw.netstack.stack.Stack` in the process writes
JSON lines (qlog-like) to that path, ``%p`` replaced by the process id (so a relay and a node
can share one setting). Unset, ``Stack.trace`` is None and the stack pays one ``if`` per
segment in, per packet out, per connection output and per timer that fires. The log is for
people, not for the daemon: it is written from the stack's own calls, so it slows the sender
somewhat (a JSON line per ACK), and it stops after ``FUNNEL_TW_TCP_TRACE_LIMIT`` records
(default 500,000, about 150 MB) with an ``end`` record.

Records (``t``: seconds since the trace's first record; sequence numbers relative to the
connection's initial sequence number; times in ms; ``c`` names the connection by its ports,
``local>remote``):

- ``start``: ``pid``, ``wall`` (Unix time), ``limit``; once per trace.
- ``flow``: ``mss``, ``sack_ok``, ``ts_ok`` (timestamps), ``snd_wscale``; the first time a
  connection shows up.
- ``ack``: one per segment that arrives on a connection that has sent data, after the stack
  processed it (not for data while nothing is in flight: the receiving role).
  ``ack``: its acknowledgement number; ``sack``: its SACK blocks as sent (a block at or below
  ``ack`` is a D-SACK, RFC 2883: the peer got that data twice); ``len``: its payload bytes;
  then the sender's state: ``una``, ``nxt``, ``max`` (highest sent), ``wnd`` (the peer's
  window), ``cwnd``, ``ssth``, ``srtt``, ``rto``, ``pipe`` (RFC 6675: bytes believed in
  flight), ``sacked`` (bytes SACKed above ``una``), ``rec`` (in loss recovery), ``dup``
  (duplicate ACKs counted);
  ``tx``: what the connection sent since the previous record, ``[segments, bytes,
  retransmitted segments, bursts, largest burst]`` where a burst is the packets of one
  output call (they leave together, unpaced); ``lim``: what held the sender back at its last
  output: ``cwnd``, ``rwnd`` (the peer's window), ``app`` (nothing more to send) or ``-``
  (nothing: a sliver it chose not to send); ``stack``: the stack's loss counters
  (``tcp_rto``, ``tcp_fast_retransmits``, ``tcp_retransmitted_segments``) when one changed;
  ``bbr`` (with ``tcp-congestion = bbr``): ``[state, bottleneck Mbit/s, min_rtt ms, pacing
  gain]``.
- ``timer``: the same fields (no ``ack``) after a timer fired on such a connection (an RTO
  shows as ``stack.tcp_rto`` going up and ``cwnd`` falling to one segment).
- ``end``: ``records``; the limit was reached and nothing more is written.
"""

from __future__ import annotations

import atexit
import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from .tcp.bbr import STATE_NAMES
from .tcp.sequence import HALF, MASK, unwrap

if TYPE_CHECKING:
    from .tcp import Connection

ENV = "FUNNEL_TW_TCP_TRACE"
LIMIT_ENV = "FUNNEL_TW_TCP_TRACE_LIMIT"
DEFAULT_LIMIT = 500_000
MAX_FLOWS = 4096  # per trace; the oldest is forgotten beyond this
COUNTERS = ("tcp_rto", "tcp_fast_retransmits", "tcp_retransmitted_segments")
_PORTS_SEQ = struct.Struct("!HHI")
_PROTO_TCP = 6


class _Flow:
    """What the trace keeps per connection between two records."""

    __slots__ = ("burst", "burst_at", "burst_max", "bursts", "high", "lim", "tx")

    def __init__(self) -> None:
        self.high: int | None = None  # end of the highest data sent (wire sequence numbers)
        self.tx = [0, 0, 0]  # segments, bytes, retransmitted segments
        self.bursts = 0
        self.burst = 0
        self.burst_max = 0
        self.burst_at = -1.0
        self.lim = "-"


class TcpTrace:
    """Turns the stack's hook calls into records for ``write`` (one JSON line each)."""

    def __init__(
        self,
        write: Callable[[str], Any],
        counters: Mapping[str, int],
        *,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._write = write
        self._counters = counters
        self.limit = limit
        self.records = 0
        self.full = False
        self._t0: float | None = None
        self._flows: dict[tuple[bytes, int, bytes, int], _Flow] = {}
        self._named: set[str] = set()  # connections that had their ``flow`` record
        # the counters as the last record showed them (the first record shows them all)
        self._last: dict[str, int] = dict.fromkeys(COUNTERS, -1)

    # --- the stack's hooks ---------------------------------------------------------------------

    def packet_out(self, packet: bytes, now: float) -> None:
        """A packet the stack emitted: data segments count towards their connection's ``tx``."""
        if self.full or len(packet) < 40:
            return
        version = packet[0] >> 4
        if version == 4 and packet[9] == _PROTO_TCP:
            at = (packet[0] & 0x0F) * 4
            src, dst = packet[12:16], packet[16:20]
        elif version == 6 and packet[6] == _PROTO_TCP and len(packet) >= 60:
            at = 40
            src, dst = packet[8:24], packet[24:40]
        else:
            return
        if len(packet) < at + 20:
            return
        sport, dport, seq = _PORTS_SEQ.unpack_from(packet, at)
        n = len(packet) - at - (packet[at + 12] >> 4) * 4
        if n <= 0:
            return
        flow = self._flow((src, sport, dst, dport))
        end = (seq + n) & MASK
        tx = flow.tx
        tx[0] += 1
        tx[1] += n
        if flow.high is not None and (flow.high - seq) & MASK and (flow.high - seq) & MASK < HALF:
            tx[2] += 1  # starts below the highest byte sent: a retransmission
        if flow.high is None or 0 < (end - flow.high) & MASK < HALF:
            flow.high = end
        if now != flow.burst_at:
            flow.burst_at = now
            flow.bursts += 1
            flow.burst = 0
        flow.burst += 1
        if flow.burst > flow.burst_max:
            flow.burst_max = flow.burst

    def after_output(self, conn: Connection, now: float) -> None:
        """The connection had its say at a flush: note what stopped it from sending more."""
        if self.full or conn.snd_max - conn.iss <= 1:
            return
        flow = self._flow(conn.key)
        if conn._data_end() <= conn.snd_nxt:
            flow.lim = "app"
        elif conn.snd_una + conn.snd_wnd - conn.snd_nxt < conn.mss:
            flow.lim = "rwnd"
        elif conn.cwnd - conn._pipe() < conn.mss:
            flow.lim = "cwnd"
        else:
            flow.lim = "-"

    def segment_in(
        self, conn: Connection, ack_w: int, options: Any, length: int, now: float
    ) -> None:
        """A segment arrived on ``conn`` and was processed."""
        if self.full or conn.snd_max - conn.iss <= 1:
            return
        if length and conn.snd_max == conn.snd_una:
            return  # data for a connection with nothing in flight: the receiving role
        record = self._state("ack", conn, self._flow(conn.key), now)
        record["ack"] = unwrap(ack_w, conn.snd_una) - conn.iss
        record["len"] = length
        if options is not None and options.sack:
            record["sack"] = [
                [unwrap(left, conn.snd_una) - conn.iss, unwrap(right, conn.snd_una) - conn.iss]
                for left, right in options.sack
            ]
        self._emit(record)

    def timer(self, conn: Connection, now: float) -> None:
        """A timer of ``conn`` fired (RTO, delayed ACK, probe...)."""
        if self.full or conn.snd_max == conn.snd_una:
            return
        self._emit(self._state("timer", conn, self._flow(conn.key), now))

    # --- records -------------------------------------------------------------------------------

    def _flow(self, key: tuple[bytes, int, bytes, int]) -> _Flow:
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= MAX_FLOWS:
                del self._flows[next(iter(self._flows))]
            flow = self._flows[key] = _Flow()
        return flow

    def _state(self, ev: str, conn: Connection, flow: _Flow, now: float) -> dict[str, Any]:
        if self._t0 is None:
            self._t0 = now
            self._emit({"ev": "start", "pid": os.getpid(), "wall": now, "limit": self.limit})
        name = f"{conn.local[1]}>{conn.remote[1]}"
        if name not in self._named:
            if len(self._named) >= MAX_FLOWS:
                self._named.clear()
            self._named.add(name)
            self._emit(
                {
                    "ev": "flow",
                    "t": round(now - self._t0, 6),
                    "c": name,
                    "mss": conn.mss,
                    "sack_ok": conn.sack_ok,
                    "ts_ok": conn.ts_ok,
                    "snd_wscale": conn.snd_wscale,
                }
            )
        iss = conn.iss
        srtt = conn.srtt
        record: dict[str, Any] = {
            "ev": ev,
            "t": round(now - self._t0, 6),
            "c": name,
            "una": conn.snd_una - iss,
            "nxt": conn.snd_nxt - iss,
            "max": conn.snd_max - iss,
            "wnd": conn.snd_wnd,
            "cwnd": conn.cwnd,
            "ssth": conn.ssthresh,
            "srtt": None if srtt is None else round(srtt * 1000, 3),
            "rto": round(conn.rto * 1000, 1),
            "pipe": conn._pipe(),
            "sacked": conn.sacked_bytes,
            "rec": conn.in_recovery,
            "dup": conn.dupacks,
            "lim": flow.lim,
        }
        bbr = conn.bbr
        if bbr is not None:
            record["bbr"] = [
                STATE_NAMES[bbr.state],
                round(bbr.bw * 8e-6, 1),
                None if bbr.min_rtt is None else round(bbr.min_rtt * 1000, 3),
                round(bbr.pacing_gain, 3),
            ]
        if flow.tx[0]:
            record["tx"] = [*flow.tx, flow.bursts, flow.burst_max]
            flow.tx = [0, 0, 0]
            flow.bursts = flow.burst_max = 0
            flow.burst_at = -1.0
        changed = {
            k: v for k in COUNTERS if (v := self._counters.get(k, 0)) != self._last.get(k, 0)
        }
        if changed:
            record["stack"] = changed
            self._last.update(changed)
        return record

    def _emit(self, record: dict[str, Any]) -> None:
        if self.full:
            return
        self.records += 1
        if self.records > self.limit:
            self.full = True
            record = {"ev": "end", "records": self.records - 1}
        self._write(json.dumps(record, separators=(",", ":")) + "\n")


_files: dict[str, IO[str]] = {}


def _open(path: str) -> IO[str]:
    """One file per path per process, however many stacks write to it; closed at exit."""
    file = _files.get(path)
    if file is None:
        try:
            file = open(path, "a", buffering=1 << 20, encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise OSError(e.errno, f"{ENV}: cannot open {path}: {e.strerror}") from e
        _files[path] = file
        atexit.register(file.close)
    return file


def from_environment(
    counters: Mapping[str, int], environ: Mapping[str, str] = os.environ
) -> TcpTrace | None:
    """A trace writing to ``$FUNNEL_TW_TCP_TRACE`` (``%p``: the pid), or None when unset."""
    path = environ.get(ENV)
    if not path:
        return None
    try:
        limit = max(int(environ.get(LIMIT_ENV) or DEFAULT_LIMIT), 1)
    except ValueError:
        limit = DEFAULT_LIMIT
    return TcpTrace(_open(path.replace("%p", str(os.getpid()))).write, counters, limit=limit)
