"""Deterministic harness for the sans-IO TCP stack: two Stacks joined by a simulated link.

Time is simulated: nothing here reads a clock. The link decides, per packet and from its own
seeded ``random.Random``, whether to drop, duplicate, hold back (reorder) or delay it; when no
packet is due the clock jumps to the earliest packet arrival or stack deadline. Every packet a
stack emits is checked (length against the MTU, IPv4 header checksum, TCP checksum) and
recorded, so tests can look at the wire.

    net = Net(Stack([A4], rng=random.Random(1)), Stack([B4], rng=random.Random(2)))
    net.b.stack.listen(80)
    conn = net.a.connect(B4, 80)
    net.run(lambda: bool(net.a.connected))

:class:`RawPeer` is the other tool: a hand-driven TCP endpoint built from
:class:`~funnel_tw.netstack.segment.PacketBuilder`, for segments a real stack would not send.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NamedTuple

from twisted.trial.unittest import FailTest

from funnel_tw.netstack import tcp
from funnel_tw.netstack.checksum import verify
from funnel_tw.netstack.ip import PROTO_TCP, parse, pseudo_header
from funnel_tw.netstack.segment import (
    ACK,
    FIN,
    HEADER,
    RST,
    SYN,
    Options,
    PacketBuilder,
    parse_options,
    syn_options,
)
from funnel_tw.netstack.stack import ECHO_REPLY, Stack
from funnel_tw.netstack.tcp import Connection

T0 = 1000.0
A4 = IPv4Address("10.0.0.1").packed
B4 = IPv4Address("10.0.0.2").packed
C4 = IPv4Address("10.0.0.3").packed
A6 = IPv6Address("fd00::1").packed
B6 = IPv6Address("fd00::2").packed
C6 = IPv6Address("fd00::3").packed

MASK = 0xFFFFFFFF


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


# --- looking at the wire -------------------------------------------------------------------------


class Seg(NamedTuple):
    """A TCP segment as seen on the wire (wire sequence numbers, unscaled window field)."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: Options
    raw_options: bytes
    payload: bytes
    length: int  # of the whole IP packet

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    @property
    def is_pure_ack(self) -> bool:
        return self.flags & (SYN | FIN | RST) == 0 and not self.payload and bool(self.flags & ACK)


def parse_seg(packet: bytes) -> Seg | None:
    """The TCP segment in ``packet``, or None if it carries something else."""
    ip = parse(packet)
    if ip.protocol != PROTO_TCP:
        return None
    data = ip.payload
    sport, dport, seq, ack, offset, flags, window, _, _ = HEADER.unpack_from(data)
    header_len = (offset >> 4) * 4
    raw = data[20:header_len]
    options = parse_options(raw)
    assert options is not None, "stack emitted malformed TCP options"
    return Seg(
        ip.src,
        ip.dst,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        options,
        raw,
        data[header_len:],
        len(packet),
    )


def packet_problems(packet: bytes, mtu: int) -> list[str]:
    """What is wrong with a packet a stack emitted: size, IPv4 header and TCP checksums."""
    problems = []
    if len(packet) > mtu:
        problems.append(f"packet of {len(packet)} bytes exceeds the MTU {mtu}")
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if not verify(packet[:ihl]):
            problems.append("bad IPv4 header checksum")
        total = int.from_bytes(packet[2:4], "big")
        if total != len(packet):
            problems.append("IPv4 total length does not match")
    elif version == 6:
        if int.from_bytes(packet[4:6], "big") + 40 != len(packet):
            problems.append("IPv6 payload length does not match")
    else:
        return [*problems, f"IP version {version}"]
    ip = parse(packet)
    if ip.protocol == PROTO_TCP and not verify(
        pseudo_header(ip.src, ip.dst, PROTO_TCP, len(ip.payload)), ip.payload
    ):
        problems.append("bad TCP checksum")
    return problems


# --- the simulated link --------------------------------------------------------------------------


@dataclass
class LinkProfile:
    """Per-packet behaviour of the link (probabilities in 0..1, times in seconds)."""

    latency: float = 0.001  # one way
    jitter: float = 0.0  # extra delay, uniform in [0, jitter]
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability a packet is held back ...
    reorder_delay: float = 0.004  # ... for up to this much longer
    # a bottleneck each way: packets leave at ``rate`` bytes per second (0: at once) from a
    # queue of ``queue`` bytes; one that does not fit is dropped (a shallow buffer's tail drop)
    rate: float = 0.0
    queue: int = 1 << 30


def random_profile(rng: random.Random) -> LinkProfile:
    """Link behaviour drawn uniformly: up to 20% loss, 10% duplication, 30% reordering."""
    return LinkProfile(
        latency=rng.uniform(0.0005, 0.02),
        jitter=rng.choice([0.0, rng.uniform(0.0, 0.005)]),
        loss=rng.uniform(0.0, 0.2),
        duplicate=rng.uniform(0.0, 0.1),
        reorder=rng.uniform(0.0, 0.3),
        reorder_delay=rng.uniform(0.001, 0.02),
    )


@dataclass
class LinkStats:
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delivered: int = 0
    overflowed: int = 0  # dropped at the bottleneck's queue (LinkProfile.rate / queue)


class SimulationTimeout(FailTest):
    """The condition a test waited for did not come within the simulated time or steps."""


@dataclass
class Host:
    """One Stack and what its application saw."""

    name: str
    stack: Stack
    local: bytes
    sent: list[bytes] = field(default_factory=list)  # every packet emitted, in order
    sent_times: list[float] = field(default_factory=list)
    events: list[tuple[int, Any, Any]] = field(default_factory=list)
    received: dict[Connection, bytearray] = field(default_factory=dict)
    accepted: list[Connection] = field(default_factory=list)
    connected: list[Connection] = field(default_factory=list)
    eof: list[Connection] = field(default_factory=list)
    closed: dict[Connection, str | None] = field(default_factory=dict)
    drained: list[Connection] = field(default_factory=list)
    echo_replies: list[Any] = field(default_factory=list)
    on_event: Callable[[int, Any, Any], None] | None = None
    now: Callable[[], float] = field(default=lambda: T0)

    def connect(self, remote: bytes, port: int, local_port: int = 0) -> Connection:
        return self.stack.connect(self.local, remote, port, self.now(), local_port)

    def segments(self) -> list[Seg]:
        return [s for s in map(parse_seg, self.sent) if s is not None]

    def data_received(self, conn: Connection | None = None) -> bytes:
        if conn is None:
            return b"".join(bytes(b) for b in self.received.values())
        return bytes(self.received.get(conn, b""))

    def dispatch(self, kind: int, conn: Any, data: Any) -> None:
        self.events.append((kind, conn, data))
        if kind == tcp.ACCEPTED:
            self.accepted.append(conn)
        elif kind == tcp.CONNECTED:
            self.connected.append(conn)
        elif kind == tcp.DATA:
            self.received.setdefault(conn, bytearray()).extend(data)
        elif kind == tcp.EOF:
            self.eof.append(conn)
        elif kind == tcp.CLOSED:
            assert conn not in self.closed, f"CLOSED reported twice for {conn!r}"
            self.closed[conn] = data
        elif kind == tcp.DRAINED:
            self.drained.append(conn)
        elif kind == ECHO_REPLY:
            self.echo_replies.append(data)
        if self.on_event is not None:
            self.on_event(kind, conn, data)

    def kinds(self, conn: Connection | None = None) -> list[int]:
        return [k for k, c, _ in self.events if conn is None or c is conn]


class Net:
    """Two hosts, a link between them and a simulated clock."""

    def __init__(
        self,
        a: Stack,
        b: Stack,
        profile: LinkProfile | None = None,
        *,
        seed: int = 0,
        now: float = T0,
    ) -> None:
        self.now = now
        self.profile = profile or LinkProfile()
        self.rng = random.Random(seed)
        self.a = Host("a", a, next(iter(a.addresses)), now=lambda: self.now)
        self.b = Host("b", b, next(iter(b.addresses)), now=lambda: self.now)
        self.link = LinkStats()
        self.problems: list[str] = []
        # return True to drop a packet (on top of the random profile): (sender, packet)
        self.drop: Callable[[Host, bytes], bool] | None = None
        # a middlebox: rewrites each packet on the link (after it was checked and recorded)
        self.mangle: Callable[[Host, bytes], bytes] | None = None
        self._queue: list[tuple[float, int, Host, bytes]] = []
        self._n = 0
        self._busy_until: dict[str, float] = {}  # per sender: the bottleneck is busy until

    @classmethod
    def pair(
        cls,
        *,
        v6: bool = False,
        mtu: int = 1280,
        profile: LinkProfile | None = None,
        seed: int = 0,
        **stack_args: Any,
    ) -> Net:
        a_addr, b_addr = (A6, B6) if v6 else (A4, B4)
        a = Stack([a_addr], mtu=mtu, rng=random.Random(seed * 2 + 1), **stack_args)
        b = Stack([b_addr], mtu=mtu, rng=random.Random(seed * 2 + 2), **stack_args)
        return cls(a, b, profile, seed=seed)

    @property
    def hosts(self) -> tuple[Host, Host]:
        return (self.a, self.b)

    def peer_of(self, host: Host) -> Host:
        return self.b if host is self.a else self.a

    # --- moving packets ---

    def _schedule(self, at: float, to: Host, packet: bytes) -> None:
        self._n += 1
        heapq.heappush(self._queue, (at, self._n, to, packet))

    def _transmit(self, sender: Host, packet: bytes) -> None:
        for problem in packet_problems(packet, sender.stack.mtu):
            self.problems.append(f"{sender.name} t={self.now - T0:.4f}: {problem}")
        sender.sent.append(packet)
        sender.sent_times.append(self.now)
        self.link.sent += 1
        if self.mangle is not None:
            packet = self.mangle(sender, packet)
        if self.drop is not None and self.drop(sender, packet):
            self.link.dropped += 1
            return
        p, rng = self.profile, self.rng
        if p.loss and rng.random() < p.loss:
            self.link.dropped += 1
            return
        queued = 0.0
        if p.rate:
            free = max(self._busy_until.get(sender.name, self.now), self.now)
            if (free - self.now) * p.rate + len(packet) > p.queue:
                self.link.overflowed += 1
                return
            done = free + len(packet) / p.rate
            self._busy_until[sender.name] = done
            queued = done - self.now
        copies = 1
        if p.duplicate and rng.random() < p.duplicate:
            self.link.duplicated += 1
            copies = 2
        to = self.peer_of(sender)
        for _ in range(copies):
            delay = queued + p.latency + (rng.uniform(0, p.jitter) if p.jitter else 0.0)
            if p.reorder and rng.random() < p.reorder:
                self.link.reordered += 1
                delay += rng.uniform(0, p.reorder_delay)
            self._schedule(self.now + delay, to, packet)

    def inject(self, to: Host, packet: bytes, delay: float = 0.0) -> None:
        """Deliver ``packet`` to ``to`` after ``delay`` (not subject to the link profile)."""
        self._schedule(self.now + delay, to, packet)

    def pump(self) -> None:
        """Flush both stacks, put their packets on the link, hand events to the applications;
        again until nothing moves (applications react to events by sending)."""
        for _ in range(10_000):
            moved = False
            for host in self.hosts:
                host.stack.flush(self.now)
            for host in self.hosts:
                out, host.stack.outgoing = host.stack.outgoing, []
                for packet in out:
                    moved = True
                    self._transmit(host, packet)
                events, host.stack.events = host.stack.events, []
                for kind, conn, data in events:
                    moved = True
                    host.dispatch(kind, conn, data)
            if not moved:
                return
        raise AssertionError("applications and stacks keep each other busy forever")

    def next_time(self) -> float | None:
        times = [host.stack.next_deadline() for host in self.hosts]
        if self._queue:
            times.append(self._queue[0][0])
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def step(self, horizon: float | None = None) -> bool:
        """Advance to the next arrival or deadline (not past ``horizon``) and process it."""
        t = self.next_time()
        if t is None or (horizon is not None and t > horizon):
            if horizon is not None:
                self.now = max(self.now, horizon)
            return False
        self.now = max(self.now, t)
        while self._queue and self._queue[0][0] <= self.now:
            _, _, to, packet = heapq.heappop(self._queue)
            self.link.delivered += 1
            to.stack.receive(packet, self.now)
        for host in self.hosts:
            deadline = host.stack.next_deadline()
            if deadline is not None and deadline <= self.now:
                host.stack.tick(self.now)
        self.pump()
        return True

    def run(
        self,
        until: Callable[[], bool],
        *,
        timeout: float = 300.0,
        max_steps: int = 200_000,
    ) -> float:
        """Run until ``until()`` holds; the simulated seconds it took. Raises
        :class:`SimulationTimeout` after ``timeout`` simulated seconds or ``max_steps``."""
        start = self.now
        horizon = start + timeout
        self.pump()
        for _ in range(max_steps):
            if until():
                return self.now - start
            if not self.step(horizon):
                if until():
                    return self.now - start
                raise SimulationTimeout(
                    f"nothing left to do or {timeout}s passed (t={self.now - start:.3f}s); "
                    f"{self.describe()}"
                )
        raise SimulationTimeout(f"{max_steps} steps; {self.describe()}")

    def run_for(self, seconds: float, max_steps: int = 200_000) -> None:
        """Let ``seconds`` of simulated time pass, processing whatever happens."""
        horizon = self.now + seconds
        self.pump()
        for _ in range(max_steps):
            if not self.step(horizon):
                return
        raise SimulationTimeout(f"{max_steps} steps; {self.describe()}")

    def describe(self) -> str:
        conns = [
            repr(c)
            for host in self.hosts
            for table in (host.stack.connections, host.stack.time_wait)
            for c in table.values()
        ]
        return (
            f"link={self.link} a={self.a.stack.stats()} b={self.b.stack.stats()} "
            f"connections={conns}"
        )


def strip_syn_options(sender: Host, packet: bytes) -> bytes:
    """A middlebox that removes window scaling and SACK-permitted from SYNs (keeps the MSS),
    leaving a plain NewReno connection without window scaling."""
    seg = parse_seg(packet)
    if seg is None or not seg.flags & SYN:
        return packet
    options = syn_options(seg.options.mss or 536, None, False)
    return PacketBuilder(seg.src, seg.dst).build(
        seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window, options, seg.payload
    )


# --- a scripted transfer -------------------------------------------------------------------------


@dataclass
class Transfer:
    """Client sends ``up`` then closes; the server sends ``down`` at accept and closes at EOF."""

    net: Net
    up: bytes
    down: bytes
    port: int = 80
    client: Connection | None = None
    server: Connection | None = None

    def start(self) -> Transfer:
        net = self.net
        net.b.stack.listen(self.port)

        def on_client(kind: int, conn: Any, data: Any) -> None:
            if kind == tcp.CONNECTED:
                if self.up:
                    conn.send(self.up)
                conn.close()

        def on_server(kind: int, conn: Any, data: Any) -> None:
            if kind == tcp.ACCEPTED:
                self.server = conn
                if self.down:
                    conn.send(self.down)
            elif kind == tcp.EOF:
                conn.close()

        net.a.on_event = on_client
        net.b.on_event = on_server
        self.client = net.a.connect(net.b.local, self.port)
        return self

    def done(self) -> bool:
        return (
            self.client is not None
            and self.server is not None
            and self.client in self.net.a.closed
            and self.server in self.net.b.closed
        )

    def run(self, timeout: float = 600.0, max_steps: int = 400_000) -> float:
        return self.net.run(self.done, timeout=timeout, max_steps=max_steps)


# --- a hand-driven peer --------------------------------------------------------------------------


class RawPeer:
    """A TCP endpoint driven by hand: builds segments toward ``stack`` and reads its answers.

    ``seq`` is the next sequence number this peer sends; ``ack`` what it acknowledges.
    """

    def __init__(
        self,
        stack: Stack,
        local: bytes,
        remote: bytes,
        sport: int,
        dport: int,
        *,
        iss: int = 1000,
    ) -> None:
        self.stack = stack
        self.local = local
        self.remote = remote
        self.sport = sport
        self.dport = dport
        self.builder = PacketBuilder(local, remote)
        self.iss = iss
        self.seq = iss
        self.ack = 0
        self.window = 0xFFFF

    def packet(
        self,
        flags: int,
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: bytes = b"",
        data: bytes = b"",
    ) -> bytes:
        return self.builder.build(
            self.sport,
            self.dport,
            self.seq if seq is None else seq,
            (self.ack if ack is None else ack) if flags & ACK else 0,
            flags,
            self.window if window is None else window,
            options,
            data,
        )

    def send(self, flags: int, now: float, **kwargs: Any) -> list[Seg]:
        """Deliver one segment and flush; the segments the stack sent back to us."""
        self.stack.receive(self.packet(flags, **kwargs), now)
        self.stack.flush(now)
        return self.take()

    def take(self) -> list[Seg]:
        """Remove and return the stack's outgoing segments addressed to this peer."""
        mine, others = [], []
        for packet in self.stack.outgoing:
            seg = parse_seg(packet)
            if seg is not None and seg.dst == self.local and seg.dport == self.sport:
                mine.append(seg)
            else:
                others.append(packet)
        self.stack.outgoing = others
        return mine

    def push(self, data: bytes, now: float, flags: int = ACK, **kwargs: Any) -> list[Seg]:
        """Send ``data`` at ``self.seq`` and advance it; the answers."""
        out = self.send(flags, now, data=data, **kwargs)
        self.seq += len(data) + (1 if flags & FIN else 0)
        return out

    def syn(self, now: float, options: bytes | None = None) -> list[Seg]:
        """Send SYN (with our usual options unless given); returns the answers."""
        opts = syn_options(1460, 7, True) if options is None else options
        out = self.send(SYN, now, options=opts)
        self.seq = self.iss + 1
        return out

    def handshake(self, now: float, options: bytes | None = None) -> Seg:
        """SYN, expect SYN-ACK, ACK it: the stack's SYN-ACK."""
        out = self.syn(now, options)
        synacks = [s for s in out if s.has(SYN | ACK)]
        assert len(synacks) == 1, out
        synack = synacks[0]
        self.ack = (synack.seq + 1) & MASK
        self.send(ACK, now)
        return synack


def connected_pair(net: Net, port: int = 80) -> tuple[Connection, Connection]:
    """Open a connection from ``net.a`` to ``net.b`` and run until both ends know it."""
    net.b.stack.listen(port)
    before = len(net.b.accepted)
    client = net.a.connect(net.b.local, port)
    net.run(lambda: client in net.a.connected and len(net.b.accepted) > before, timeout=100)
    return client, net.b.accepted[-1]


def listening_stack(address: bytes = B4, port: int = 80, **kwargs: Any) -> Stack:
    kwargs.setdefault("rng", random.Random(7))
    stack = Stack([address], **kwargs)
    stack.listen(port)
    return stack


def raw_established(
    stack: Stack,
    *,
    sport: int = 40000,
    dport: int = 80,
    options: bytes | None = None,
    now: float = T0,
    iss: int = 1000,
) -> tuple[RawPeer, Connection, Seg]:
    """A RawPeer that completed the handshake with listening ``stack``: (peer, conn, SYN-ACK)."""
    local = A4 if len(next(iter(stack.addresses))) == 4 else A6
    peer = RawPeer(stack, local, next(iter(stack.addresses)), sport, dport, iss=iss)
    before = len(stack.events)
    synack = peer.handshake(now, options)
    accepted = [c for k, c, _ in stack.events[before:] if k == tcp.ACCEPTED]
    assert len(accepted) == 1, stack.events
    return peer, accepted[0], synack
