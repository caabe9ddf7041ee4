"""Connection keeps its attributes in slots (memory per idle connection): every attribute the
code assigns must be declared, or that assignment raises AttributeError in whatever rare path
reaches it. Checked on the source, so a path no other test runs is covered too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import funnel_tw
from funnel_tw.netstack.tcp import Connection
from tests.netstack.tcp_harness import LinkProfile, Net, connected_pair, payload

ROOT = Path(funnel_tw.__file__).parent
# the classes that make up a Connection, and the modules that hold one as ``conn``
PARTS = {cls.__name__ for cls in Connection.__mro__[:-1]}
OWNERS = ["netstack/stack.py", "overlay/transport.py", "overlay/userspace.py"]


def assigned(tree: ast.AST, name: str) -> set[tuple[str, int]]:
    """Attributes assigned on the variable ``name`` within ``tree``: (attribute, line)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for sub in ast.walk(target):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == name
                ):
                    found.add((sub.attr, node.lineno))
    return found


class SlotsTests(SynchronousTestCase):
    def test_no_instance_dict(self) -> None:
        for cls in Connection.__mro__[:-1]:
            self.assertIn("__slots__", vars(cls), cls)
        self.assertFalse(hasattr(Connection.__new__(Connection), "__dict__"))

    def test_every_assigned_attribute_is_declared(self) -> None:
        allowed = set(Connection.__slots__) | {
            name
            for cls in Connection.__mro__
            for name, value in vars(cls).items()
            if isinstance(value, property) and value.fset is not None
        }
        missing = []
        seen = set()
        for path in sorted((ROOT / "netstack" / "tcp").glob("*.py")):
            for cls in ast.walk(ast.parse(path.read_text())):
                if isinstance(cls, ast.ClassDef) and cls.name in PARTS:
                    seen.add(cls.name)
                    for attr, line in assigned(cls, "self"):
                        if attr not in allowed:
                            missing.append(f"{path.name}:{line} self.{attr}")
        self.assertEqual(seen, PARTS)  # every part's source was read
        for owner in OWNERS:
            for attr, line in assigned(ast.parse((ROOT / owner).read_text()), "conn"):
                if attr not in allowed:
                    missing.append(f"{owner}:{line} conn.{attr}")
        self.assertEqual(missing, [])


class IdleMemoryTests(SynchronousTestCase):
    """What a connection keeps once everything it sent is acknowledged: no buffer capacity,
    no records of segments, no queue of losses (each was kilobytes per idle connection)."""

    def test_nothing_kept_after_a_lossy_transfer(self) -> None:
        net = Net.pair(profile=LinkProfile(latency=0.005, loss=0.05), seed=3)
        client, server = connected_pair(net)
        data = payload(512 * 1024)
        client.send(data)
        net.run(lambda: net.b.data_received(server) == data and client.send_buffered == 0)
        self.assertGreater(client.retransmits + net.link.dropped, 0)  # losses were recovered
        self.assertEqual((client.sndq, client.sndq_starts, client.sndq_head), ([], [], 0))
        # the lists' room went with the data
        self.assertLess(sys.getsizeof(client.sndq) + sys.getsizeof(client.sndq_starts), 200)
        self.assertEqual((client.rtx, client.lost_q), ([], None))
        self.assertEqual(len(client.in_flight), 0)
        self.assertLess(sys.getsizeof(client.in_flight), 200)
        client.send(b"more")  # and it goes on working
        net.run(lambda: net.b.data_received(server) == data + b"more")
