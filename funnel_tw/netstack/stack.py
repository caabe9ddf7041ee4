"""The sans-IO TCP/IP stack: IP packets in, IP packets and application events out.

    stack = Stack([address_bytes, ...], mtu=1280)
    stack.listen(41642)
    stack.receive(ip_packet, now)         # from the tunnel (or a TUN device)
    conn = stack.connect(src, dst, port, now)
    conn.send(b"..."); conn.close()
    stack.flush(now)                      # after a batch: send what the windows allow, owed ACKs
    stack.outgoing                        # [ip_packet] to put into the tunnel
    stack.events                          # [(kind, connection, data)] for the application
    stack.tick(now) at stack.next_deadline()

Memory is bounded: a cap on connections, on half-open connections per listening port (SYN
floods), on TIME-WAIT entries, and on each connection's buffers.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections.abc import Sequence
from typing import Any

from . import icmp, tcp
from .checksum import verify
from .events import ACCEPTED, CLOSED, CONNECTED, ECHO_REPLY, Event
from .ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, IPError, parse, pseudo_header
from .paths import PATH_LIFETIME, PathMemory
from .segment import (
    ACK,
    HEADER,
    IP_BAD_CHECKSUM,
    IP_BAD_LENGTHS,
    IP_FRAGMENT,
    RST,
    SYN,
    TCP_BAD_CHECKSUM,
    TCP_BAD_HEADER,
    TIMESTAMP_HEAD,
    TIMESTAMP_LEN,
    PacketBuilder,
    parse_options,
    tcp4_fields,
)
from .tcp import Connection
from .tcp.resume import DONE as RESUME_DONE
from .trace import TcpTrace, from_environment

_V4 = struct.Struct("!BBHHHBBH4s4s")
RECEIVE_MEMORY = 256 << 20  # window growth, all connections together
CONGESTION = ("cubic", "bbr")  # tcp-congestion: the default first
_NO_OPTIONS = parse_options(b"")
_IP_ERRORS = {
    IP_BAD_LENGTHS: "bad IPv4 lengths",
    IP_FRAGMENT: "IPv4 fragment",
    IP_BAD_CHECKSUM: "bad IPv4 header checksum",
}
_TCP_DROPS = {TCP_BAD_HEADER: "drop_tcp_header", TCP_BAD_CHECKSUM: "drop_tcp_checksum"}


# connections at once (tcp-max-connections): above the relay's default max-connections (10,000),
# one overlay connection each, with room for probes and tailnet peers
MAX_CONNECTIONS = 16384
FAILURES_KEPT = 16  # exceptions held for the owner to log between two looks


class Stack:
    def __init__(
        self,
        addresses: Sequence[bytes],
        *,
        mtu: int = 1280,
        receive_buffer: int = tcp.RECEIVE_BUFFER,
        receive_buffer_max: int = tcp.RECEIVE_BUFFER_MAX,
        receive_memory: int = RECEIVE_MEMORY,
        send_buffer_max: int = tcp.SEND_BUFFER_MAX,
        max_connections: int = MAX_CONNECTIONS,
        syn_backlog: int = 256,
        max_time_wait: int = 4096,
        verify_checksums: bool = False,
        challenge_ack_limit: int = 1000,
        rng: random.Random | None = None,
        path_memory: float = PATH_LIFETIME,
        timestamps: bool = True,
        congestion: str = "cubic",
    ) -> None:
        self.addresses = set(addresses)
        self.mtu = mtu
        self.receive_buffer = receive_buffer  # each connection's first window
        self.receive_buffer_max = receive_buffer_max  # ... and what autotuning grows it to
        # all connections' windows together may grow this much beyond their first ones (as
        # Linux's tcp_mem bounds TCP memory): what peers can make us hold stays bounded
        self.receive_memory = receive_memory
        self.send_buffer_max = send_buffer_max  # what each send buffer may grow to (2 x cwnd)
        self.window_granted = 0
        self.max_connections = max_connections
        self.syn_backlog = syn_backlog
        self.max_time_wait = max_time_wait
        self.verify_checksums = verify_checksums
        self.challenge_ack_limit = challenge_ack_limit
        self.rng = rng or random.SystemRandom()
        self.timestamps = timestamps  # offered in our SYNs, taken in theirs (RFC 7323)
        if congestion not in CONGESTION:
            raise ValueError(f"congestion control {congestion!r}: one of {', '.join(CONGESTION)}")
        self.congestion = congestion  # every connection's: tcp/cubic.py or tcp/bbr.py
        # per peer address, for the next connection (Careful Resume): None when kept 0 s
        self.paths: PathMemory | None = PathMemory(path_memory) if path_memory > 0 else None
        self.listeners: dict[int, int] = {}  # port -> half-open connections
        self.connections: dict[tuple[bytes, int, bytes, int], Connection] = {}
        self.time_wait: dict[tuple[bytes, int, bytes, int], Connection] = {}
        self.outgoing: list[bytes] = []
        self.events: list[tuple[Event, Any, Any]] = []
        self.counters: dict[str, int] = {}
        # connections that raised (a bug: what peers send is checked and counted), each reset:
        # the exceptions, for the owner to log (at most FAILURES_KEPT between two looks)
        self.failures: list[Exception] = []
        # the optional sender event log (trace.py): None unless FUNNEL_TW_TCP_TRACE is set
        self.trace: TcpTrace | None = from_environment(self.counters)
        self._dirty: dict[Connection, None] = {}
        # timers: a heap of (deadline, n, connection), lazily cleaned: an entry is live while
        # it equals the connection's ``sched`` (the deadline last pushed for it)
        self._timers: list[tuple[float, int, Connection]] = []
        self._touched: dict[Connection, None] = {}  # connections whose deadline may have moved
        self._order = itertools.count()
        self._challenge_window = 0.0
        self._challenge_count = 0
        self._now = 0.0

    @property
    def now(self) -> float:
        """The time of the call being handled (for connections that need it mid-call)."""
        return self._now

    # --- used by connections (what owner.Owner asks of a stack) --------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def failed(self, conn: Connection, error: Exception) -> None:
        """``conn`` raised: reset it, so that the other connections of the batch, timer or
        flush go on, and it does not raise again at its next segment or deadline."""
        self.count("tcp_internal_errors")
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(error)
        self._dirty.pop(conn, None)
        try:
            conn.abort()
        except Exception:  # its state is beyond a reset: forget it all the same
            conn.state = tcp.State.CLOSED
            self.connection_closed(conn, "internal error")

    def emit(self, kind: Event, conn: Connection, data: Any) -> None:
        self.events.append((kind, conn, data))

    def emit_packet(self, packet: bytes) -> None:
        self.outgoing.append(packet)
        if self.trace is not None:
            self.trace.packet_out(packet, self._now)

    def emit_packets(self, packets: list[bytes]) -> None:
        self.outgoing.extend(packets)
        if self.trace is not None:
            for packet in packets:
                self.trace.packet_out(packet, self._now)

    def mark_output(self, conn: Connection) -> None:
        self._dirty[conn] = None

    def grow_window(self, conn: Connection, extra: int) -> int:
        granted = min(extra, self.receive_memory - self.window_granted)
        if granted < extra:
            self.count("tcp_rcvbuf_budget_full")
        if granted <= 0:
            return 0
        self.window_granted += granted
        return granted

    def _release_window(self, conn: Connection) -> None:
        self.window_granted -= conn.window_granted
        conn.window_granted = 0

    def allow_challenge_ack(self) -> bool:
        """RFC 5961 section 7: a global limit on challenge ACKs per second."""
        if self._now - self._challenge_window >= 1.0:
            self._challenge_window = self._now
            self._challenge_count = 0
        self._challenge_count += 1
        return self._challenge_count <= self.challenge_ack_limit

    def _release_half_open(self, conn: Connection) -> None:
        if conn.half_open:
            conn.half_open = False
            port = conn.local[1]
            if port in self.listeners:
                self.listeners[port] -= 1

    def connection_established(self, conn: Connection, passive: bool) -> None:
        if passive:
            self._release_half_open(conn)
            self.emit(ACCEPTED, conn, None)
        else:
            self.emit(CONNECTED, conn, None)

    def _remember(self, conn: Connection, reason: str | None) -> None:
        """A connection ended: keep what it learned of the path for the next one to its
        peer, give back the entry it took, or forget the path if it died of a timeout."""
        paths = self.paths
        if paths is None or conn.cr_phase == RESUME_DONE:
            return
        entry, conn.cr_entry = conn.cr_entry, None
        conn.cr_phase = RESUME_DONE
        address = conn.remote[0]
        if reason is not None and ("timeout" in reason or "timed out" in reason):
            paths.forget(address, entry)
            return
        learned = conn.path_learned()
        if learned is not None:
            paths.save(address, self._now, *learned)
        elif entry is not None:
            paths.give_back(address, entry)

    def connection_closed(self, conn: Connection, reason: str | None) -> None:
        key = conn.key
        self._remember(conn, reason)
        self._release_window(conn)
        if self.connections.get(key) is conn:
            del self.connections[key]
        if self.time_wait.get(key) is conn:
            del self.time_wait[key]
        self._dirty.pop(conn, None)
        if conn.half_open:
            self._release_half_open(conn)  # never accepted: nobody to tell
        elif not conn.close_reported:
            conn.close_reported = True
            self.emit(CLOSED, conn, reason)

    def entered_time_wait(self, conn: Connection) -> None:
        """A cleanly closed connection lingers in TIME-WAIT; the application is done with it."""
        if len(self.time_wait) >= self.max_time_wait:
            oldest = next(iter(self.time_wait.values()))
            self.count("tcp_time_wait_recycled")
            oldest.expire()
        if self.connections.get(conn.key) is conn:
            del self.connections[conn.key]
        self._remember(conn, None)
        self._release_window(conn)  # nothing more will be received
        self.time_wait[conn.key] = conn
        conn.close_reported = True
        self.emit(CLOSED, conn, None)

    # --- application API -----------------------------------------------------------------------

    def listen(self, port: int) -> None:
        self.listeners.setdefault(port, 0)

    def unlisten(self, port: int) -> None:
        self.listeners.pop(port, None)

    def _mss_for(self, address: bytes) -> int:
        return self.mtu - (40 if len(address) == 4 else 60)

    def _new_connection(
        self, local: tuple[bytes, int], remote: tuple[bytes, int], now: float
    ) -> Connection:
        """A connection with this stack's settings, registered under its key."""
        conn = Connection(
            self,
            local,
            remote,
            iss=self.rng.getrandbits(32),
            now=now,
            receive_buffer=self.receive_buffer,
            receive_buffer_max=self.receive_buffer_max,
            send_buffer_max=self.send_buffer_max,
            ts_offset=self.rng.getrandbits(32) if self.timestamps else None,
            mss=self._mss_for(local[0]),
            bbr=self.congestion == "bbr",
        )
        self.connections[conn.key] = conn
        return conn

    def connect(
        self, local: bytes, remote: bytes, port: int, now: float, local_port: int = 0
    ) -> Connection:
        """Active open; CONNECTED or CLOSED follows as an event. Raises OSError when full."""
        self._now = now
        if len(self.connections) >= self.max_connections:
            raise OSError("too many connections")
        if local not in self.addresses:
            raise OSError("not one of this stack's addresses")
        if not local_port:
            for _ in range(64):
                candidate = self.rng.randrange(49152, 65536)
                if (local, candidate, remote, port) not in self.connections:
                    local_port = candidate
                    break
            else:
                raise OSError("no free local port")
        conn = self._new_connection((local, local_port), (remote, port), now)
        conn.open_active(now)
        self._schedule(conn)
        return conn

    # --- input ---------------------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        """One IP packet for us; never raises on hostile input."""
        self._now = now
        try:
            self._receive(packet, now)
        except IPError:
            self.count("drop_bad_ip")

    def _receive(self, packet: bytes, now: float) -> None:
        if not packet:
            raise IPError("empty")
        fields = tcp4_fields(packet, self.verify_checksums)
        if fields is not None:
            # the hot path: IPv4 TCP, read and checked in one call (C when built)
            if isinstance(fields, int):
                raise IPError(_IP_ERRORS[fields])
            status, src, dst, sport, dport, seq, ack, flags, window, options, payload = fields
            if dst not in self.addresses:
                self.count("drop_not_for_us")
                return
            if status:
                self.count(_TCP_DROPS[status])
                return
            self._segment(src, dst, sport, dport, seq, ack, flags, window, options, payload, now)
            return
        parsed = parse(packet, self.verify_checksums)
        src, dst = parsed.src, parsed.dst
        if parsed.protocol in (PROTO_ICMP, PROTO_ICMPV6):
            self._icmp(parsed)
            return
        if parsed.protocol != PROTO_TCP:
            self.count("drop_protocol")
            return
        if dst not in self.addresses:
            self.count("drop_not_for_us")
            return
        self._tcp(src, dst, parsed.payload, now)

    def _icmp(self, packet: Any) -> None:
        if packet.dst not in self.addresses:
            self.count("drop_not_for_us")
            return
        request = icmp.parse_echo_request(packet)
        if request is not None:
            self.count("icmp_echo_answered")
            self.outgoing.append(icmp.echo_reply(request))
            return
        reply = icmp.parse_echo_reply(packet)
        if reply is not None:
            self.events.append((ECHO_REPLY, None, reply))
            return
        self.count("drop_icmp")

    def _tcp(self, src: bytes, dst: bytes, segment: bytes, now: float) -> None:
        """A TCP segment that came by the general path (IPv6: IPv4 goes through tcp4_fields)."""
        if len(segment) < 20:
            self.count("drop_tcp_short")
            return
        sport, dport, seq, ack, offset, flags, window, _, _ = HEADER.unpack_from(segment)
        header_len = (offset >> 4) * 4
        if header_len < 20 or header_len > len(segment):
            self.count("drop_tcp_header")
            return
        if self.verify_checksums and not verify(
            pseudo_header(src, dst, PROTO_TCP, len(segment)), segment
        ):
            self.count("drop_tcp_checksum")
            return
        options = segment[20:header_len]
        payload = segment[header_len:]
        self._segment(src, dst, sport, dport, seq, ack, flags, window, options, payload, now)

    def _segment(
        self,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        option_bytes: bytes,
        payload: bytes,
        now: float,
    ) -> None:
        """A checked TCP segment for one of our addresses: to its connection, or a SYN to a
        listener, or answered with a reset."""
        tsval = None
        if not option_bytes:
            options = _NO_OPTIONS
        elif (
            len(option_bytes) == TIMESTAMP_LEN
            and option_bytes[:4] == TIMESTAMP_HEAD
            and not flags & SYN
        ):
            # timestamps alone, as nearly every segment of such a connection: no object
            options = _NO_OPTIONS
            tsval = int.from_bytes(option_bytes[4:8], "big")
        else:
            options = parse_options(option_bytes)
            if options is None:
                self.count("drop_tcp_options")
                return
            tsval = options.tsval
        key = (dst, dport, src, sport)
        conn = self.connections.get(key) or self.time_wait.get(key)
        if conn is not None:
            try:
                conn.segment_arrived(seq, ack, flags, window, options, payload, now, tsval)
            except Exception as e:
                self.failed(conn, e)
            self._touched[conn] = None
            if self.trace is not None:
                self.trace.segment_in(conn, ack, options, len(payload), now)
            return
        if flags & RST:
            return
        if flags & SYN and not flags & ACK and dport in self.listeners:
            self._syn(src, dst, sport, dport, seq, window, options, now)
            return
        self.count("tcp_reset_sent")
        if flags & ACK:
            self.outgoing.append(PacketBuilder(dst, src).build(dport, sport, ack, 0, RST, 0))
        else:
            length = len(payload) + (1 if flags & SYN else 0) + (1 if flags & 1 else 0)
            self.outgoing.append(
                PacketBuilder(dst, src).build(dport, sport, 0, seq + length, RST | ACK, 0)
            )

    def _syn(
        self,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        window: int,
        options: Any,
        now: float,
    ) -> None:
        if self.listeners[dport] >= self.syn_backlog:
            self.count("tcp_syn_backlog_full")
            return
        if len(self.connections) >= self.max_connections:
            self.count("tcp_connections_full")
            return
        conn = self._new_connection((dst, dport), (src, sport), now)
        self.listeners[dport] += 1
        conn.half_open = True
        conn.open_passive(seq, window, options, now)
        self._schedule(conn)

    # --- output and timers ---------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Let every connection with something to say send it."""
        self._now = now
        touched = self._touched
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn in dirty:
                try:
                    conn.output(now)
                except Exception as e:
                    self.failed(conn, e)
                touched[conn] = None
                if self.trace is not None:
                    self.trace.after_output(conn, now)
        if touched:
            self._touched = {}
            for conn in touched:
                self._schedule(conn)

    def _schedule(self, conn: Connection) -> None:
        """Push the connection's next deadline if it moved (the old entry goes stale)."""
        t = conn.next_deadline()
        if t == conn.sched:
            return
        conn.sched = t
        if t is not None and conn.state is not tcp.State.CLOSED:
            heapq.heappush(self._timers, (t, next(self._order), conn))
            if len(self._timers) > 64 + 4 * (len(self.connections) + len(self.time_wait)):
                self._compact()

    def _compact(self) -> None:
        """Drop the stale entries (deadlines that moved): the heap stays O(connections)."""
        kept: list[tuple[float, int, Connection]] = []
        seen: set[Connection] = set()
        for entry in self._timers:
            conn = entry[2]
            if conn.sched == entry[0] and conn.state is not tcp.State.CLOSED and conn not in seen:
                seen.add(conn)
                kept.append(entry)
        heapq.heapify(kept)
        self._timers = kept

    def _top(self) -> tuple[float, int, Connection] | None:
        timers = self._timers
        while timers:
            entry = timers[0]
            conn = entry[2]
            if conn.sched == entry[0] and conn.state is not tcp.State.CLOSED:
                return entry
            heapq.heappop(timers)
        return None

    def next_deadline(self) -> float | None:
        """The earliest deadline of any connection: the top of the heap, not a walk over them."""
        for pending in (self._touched, self._dirty):  # changed since the last flush
            for conn in list(pending):
                self._schedule(conn)
        self._touched = {}
        top = self._top()
        return None if top is None else top[0]

    def tick(self, now: float) -> None:
        """Run the timers that are due (only those connections)."""
        self._now = now
        due: list[Connection] = []
        while True:
            top = self._top()
            if top is None or top[0] > now:
                break
            heapq.heappop(self._timers)
            conn = top[2]
            conn.sched = None
            due.append(conn)
        for conn in due:
            if conn.state is tcp.State.CLOSED:
                continue
            t = conn.next_deadline()
            if t is not None and t <= now:
                try:
                    conn.tick(now)
                except Exception as e:
                    self.failed(conn, e)
                if self.trace is not None:
                    self.trace.timer(conn, now)
            self._touched[conn] = None
        self.flush(now)

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["tcp_connections"] = len(self.connections)
        out["tcp_time_wait"] = len(self.time_wait)
        out["tcp_rcvbuf_granted"] = self.window_granted
        out["tcp_paths_remembered"] = len(self.paths.entries) if self.paths else 0
        return out


__all__ = ["ECHO_REPLY", "Stack", "tcp"]
