"""The seed corpus: small valid inputs for each target, made by our own builders.

    python -m tests.fuzz.seeds     # (re)writes tests/fuzz/corpus/<target>/<name>

Seeds give the fuzzer real structure to mutate (a whole WireGuard handshake, a real TLS
ClientHello from Python's ssl module, a TCP handshake by the numbers); ``test_corpus`` runs
every target over them in the normal suite. Handshake messages carry fresh ephemeral keys and
timestamps, so regenerating changes those files' bytes but not what they exercise.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import struct
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

from .targets import (
    NET_A4,
    NET_A6,
    NET_B4,
    NET_B6,
    STACK_PORT,
    T0,
    WG_A_EP,
    WG_B_EP,
    WG_KEY_A,
    WG_KEY_B,
    CookieChecker,
    Device,
    encode_key,
    icmp,
    netip,
    op,
    public_key,
    segment,
)

CORPUS = Path(__file__).parent / "corpus"


def _wireguard_messages() -> dict[str, bytes]:
    """One of each message kind, from a real handshake between two devices."""
    a = Device(WG_KEY_A, rng=random.Random(1))
    b = Device(WG_KEY_B, rng=random.Random(2))
    a.add_peer(b.public_key, allowed_ips=(ip_network("10.0.0.2/32"),), endpoint=WG_B_EP)
    peer_a = b.add_peer(a.public_key, allowed_ips=(ip_network("10.0.0.1/32"),), endpoint=WG_A_EP)
    b.send_to_peer(peer_a, _udp4(NET_B4, NET_A4, b"hello"), T0)
    ((initiation, _),) = b.outgoing
    b.outgoing.clear()
    a.receive_datagram(initiation, WG_B_EP, T0)
    ((response, _),) = a.outgoing
    a.outgoing.clear()
    b.receive_datagram(response, WG_A_EP, T0)
    ((transport, _),) = b.outgoing
    checker = CookieChecker(a.public_key, random_bytes=random.Random(3).randbytes)
    cookie = checker.create_reply(
        initiation, struct.unpack_from("<I", initiation, 4)[0], WG_B_EP, T0
    )
    return {
        "initiation": initiation,
        "response": response,
        "cookie-reply": cookie,
        "transport": transport,
    }


def _udp4(src: bytes, dst: bytes, data: bytes) -> bytes:
    return netip.build_ipv4(
        src, dst, netip.PROTO_UDP, struct.pack("!HHHH", 5000, 53, 8 + len(data), 0) + data
    )


def _syn(src: bytes, dst: bytes, options: bytes, payload: bytes = b"") -> bytes:
    flags = segment.SYN if not payload else segment.ACK | segment.PSH
    return segment.PacketBuilder(src, dst).build(
        40000, STACK_PORT, 1000, 0, flags, 65535, options, payload
    )


def _client_hello(alpn: list[str], name: str, tls12: bool = False) -> bytes:
    """The first flight of Python's ssl client (memory BIOs), SNI and ALPN set."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(alpn)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _proxy(flags: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """The proxy_header target's input: flags (bit 0 v2, 1 and 2 source and destination
    IPv6), two 16-byte address fields, two ports."""
    fields = bytes((flags,)) + src.ljust(16, b"\0") + dst.ljust(16, b"\0")
    return fields + struct.pack("!HH", sport, dport)


def _config_texts() -> dict[str, bytes]:
    key_a, key_b = encode_key(WG_KEY_A), encode_key(public_key(WG_KEY_B))
    node = (
        f"[node]\nprivate-key = {key_a}\naddress = 100.64.0.2/32, fd7a:115c:a1e0::2/128\n"
        "hostname = node.example.com\npeerapi-port = 41642\nmtu = 1280\n\n"
        f"[peer relay]\npublic-key = {key_b}\nendpoint = 203.0.113.7:41641\n"
        "allowed-ips = 100.64.0.1/32\npersistent-keepalive = 25 ; comment\nfunnel-ingress = yes\n\n"
        "[tls]\nsource = self-signed\n\n"
        "[serve 443]\nfunnel = yes\n/ = http://127.0.0.1:8080\n/healthz = text:ok\n\n"
        "[serve 8443]\ntcp-forward = 127.0.0.1:9443\nproxy-protocol = 2\n"
    )
    keyfile = "[node]\nprivate-key-file = node.key\naddress = 100.64.0.2/32\n"
    relay = (
        f"[relay]\nprivate-key = {encode_key(WG_KEY_B)}\nlisten-port = 41641\n"
        "address = 100.64.0.1/32\npublic-ports = 443, 8443\nclient-hello-timeout = 10\n\n"
        f"[node home]\npublic-key = {encode_key(public_key(WG_KEY_A))}\n"
        "allowed-ips = 100.64.0.2/32\nhostnames = node.example.com, *.apps.example.com\n"
        "peerapi = 100.64.0.2:41642\nendpoint = [2001:db8::9]:41641\n"
    )
    return {"node": node.encode(), "node-keyfile": keyfile.encode(), "relay": relay.encode()}


def seeds() -> dict[str, dict[str, bytes]]:
    """target -> seed name -> bytes."""
    wg = _wireguard_messages()
    syn4 = _syn(NET_B4, NET_A4, segment.syn_options(1240, 7, True))
    syn6 = _syn(NET_B6, NET_A6, segment.syn_options(1220, None, False))
    data4 = _syn(NET_B4, NET_A4, segment.sack_option([(1, 2)]), b"GET / HTTP/1.1\r\n\r\n")
    ping4 = icmp.echo_request(NET_B4, NET_A4, 7, 1, b"ping")
    ping6 = icmp.echo_request(NET_B6, NET_A6, 7, 1, b"ping")
    pong4 = icmp.echo_reply(icmp.Echo(NET_A4, NET_B4, 7, 1, b"ping"))
    udp4 = _udp4(NET_B4, NET_A4, b"hello")
    udp6 = netip.build_ipv6(NET_B6, NET_A6, netip.PROTO_UDP, b"\x13\x88\x00\x35\x00\x0dhello")
    hello = _client_hello(["h2", "http/1.1"], "node.example.com")
    hello12 = _client_hello(["http/1.1"], "www.example.org", tls12=True)
    # a TCP handshake, request, reply, close driven through the stack target's operations:
    # a SYN from B:40002 to port 80 (new flow), the ACK, data, the application's reply, FIN
    flow_syn = bytes((0x82, segment.SYN)) + (65535).to_bytes(2, "big") + bytes(4)
    flow_syn += bytes((4,)) + segment.syn_options(1240, None, False)[:4]
    ack = bytes((0, segment.ACK)) + (65535).to_bytes(2, "big") + bytes(5)
    data = bytes((0, segment.ACK | segment.PSH)) + (65535).to_bytes(2, "big") + bytes(5) + b"hi"
    fin = bytes((0, segment.ACK | segment.FIN)) + (65535).to_bytes(2, "big") + bytes(5)
    stack_flow = b"".join(
        (
            op(1, flow_syn),
            op(1, ack),
            op(1, data),
            op(3, b"\0\0reply"),
            op(2, b"\0\x10"),
            op(1, fin),
        )
    )
    out_flow = op(4, b"\0\0\x50") + op(2, b"\x01\x00") + op(3, b"\0\1")
    return {
        "wg_messages": wg,
        "wg_device": {
            "initiation": op(0, wg["initiation"]),
            "session-v4": op(2, udp4) + op(3, b"\0\x64") + op(2, udp4),
            "session-v6": op(2, udp6),
            "mac1-initiation": op(1, b"\0" + bytes(range(100))),
            "under-load": op(4, b"\0" + bytes(range(100))) + op(2, udp4),
            "transport-on-keypair": op(2, udp4) + op(5, wg["transport"][8:]),
            "route-out": op(2, udp4) + op(6, _udp4(NET_A4, NET_B4, b"out")),
            "timers": op(2, b"") + op(3, b"\x0b\xb8") + op(3, b"\xff\xff"),
        },
        "ip_parse": {"ipv4-tcp-syn": syn4, "ipv6-tcp-syn": syn6, "ipv4-icmp": ping4,
                     "ipv6-icmp": ping6, "ipv4-udp": udp4, "ipv6-udp": udp6},
        "netstack_icmp": {"echo-v4": ping4, "echo-v6": ping6, "reply-v4": pong4},
        "tcp_segment": {
            "syn-options": segment.syn_options(1460, 7, True),
            "sack-option": segment.sack_option([(1, 100), (200, 300)]),
            "syn-timestamps": segment.syn_options(1460, 7, True, (12345, 0)),
            "timestamps-sack": segment.timestamp_option(7, 9) + segment.sack_option([(1, 2)]),
            "fields": bytes(range(96)),
        },
        "netstack_stack": {
            "syn-v4": op(0, syn4),
            "syn-v6": op(0, syn6),
            "data-no-conn": op(0, data4),
            "ping": op(0, ping4) + op(0, ping6),
            "flow": stack_flow,
            "connect-out": out_flow,
        },
        "clienthello": {"tls13-sni-alpn": b"\0\0" + hello, "tls12-sni": b"\0\1" + hello12},
        "proxy_header": {
            "v1-v4": _proxy(0, IPv4Address("203.0.113.9").packed, NET_A4, 50000, 443),
            "v2-v6": _proxy(7, IPv6Address("2001:db8::1").packed, NET_A6, 50000, 443),
            "v1-mixed": _proxy(2, IPv6Address("2001:db8::1").packed, NET_A4, 1, 65535),
        },
        "ingress_headers": {
            "src-v4": b"203.0.113.9:50000",
            "src-v6": b"[2001:db8::1]:443",
            "target": b"node.example.com:443",
        },
        "request_path": {
            "plain": b"/app/x?y=1",
            "dots": b"/a/./b/../c//d",
            "escapes": b"/%61%2e%2e/caf%C3%A9/%7e",
            "absolute": b"https://node.example.com/a/../b",
        },
        "range_header": {
            "one": (10000).to_bytes(8, "big") + b"bytes=0-499",
            "suffix-multi": (10000).to_bytes(8, "big") + b"bytes=-500, 0-0, 9000-",
            "overlapping": (1 << 20).to_bytes(8, "big") + b"bytes=" + b"0-," * 20,
        },
        "config": _config_texts(),
    }  # fmt: skip


def main() -> None:
    for target, named in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in named.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(named)} seeds")


if __name__ == "__main__":
    main()
