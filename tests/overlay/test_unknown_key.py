"""Two Tunnels on loopback UDP where one side lacks the other's key: the side that does not
know the key warns which key knocked (once a minute per key), and the side that gets no answer
says so, with the public key the other side is missing."""

from __future__ import annotations

import random
import time
from ipaddress import ip_network

from twisted.internet import reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.overlay.tunnel import Tunnel
from funnel_tw.wireguard.constants import Constants
from funnel_tw.wireguard.device import Device
from tests.wireguard.harness import ip4


class UnknownKeyTests(TestCase):
    async def test_both_sides_say_which_key(self) -> None:
        warnings: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") == LogLevel.warn:
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        constants = Constants.shortened(2.0)  # retries every ~0.08 s, gives up after ~1.5 s
        ka, kb = keys.generate_private_key(), keys.generate_private_key()
        b = Tunnel(reactor, Device(kb, constants=constants), listen_host="127.0.0.1")
        a_device = Device(ka, constants=constants, rng=random.Random(1))
        a_device.add_peer(
            keys.public_key(kb),
            name="relay",
            allowed_ips=(ip_network("10.0.0.2/32"),),
            endpoint=("127.0.0.1", b.port),
        )
        a = Tunnel(reactor, a_device, listen_host="127.0.0.1")
        for tunnel in (a, b):
            tunnel.start()
            self.addCleanup(tunnel.stop)
        a.send_packet(ip4("10.0.0.1", "10.0.0.2", b"hello"))
        deadline = time.monotonic() + 10
        a_key = keys.encode_key(keys.public_key(ka))
        while not any("never answered" in w for w in warnings):
            self.assertLess(time.monotonic(), deadline, warnings)
            await task.deferLater(reactor, 0.05, lambda: None)
        knocked = [w for w in warnings if "not a peer here" in w]
        self.assertEqual(len(knocked), 1, warnings)  # many initiations, one warning a minute
        self.assertIn(a_key, knocked[0])
        self.assertIn(f"127.0.0.1:{a.port}", knocked[0])
        (failed,) = [w for w in warnings if "never answered" in w]
        self.assertIn(f"has this side's public key {a_key}", failed)
        self.assertGreater(b.device.stats()["drop_unknown_peer"], 1)
