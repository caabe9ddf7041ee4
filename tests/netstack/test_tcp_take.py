"""A resumed reader takes held data joined into reads (``resume_reading(take, join_up_to)``).

The relay's public socket pauses its overlay stream after each 64 KiB; behind it the window's
segments are held one chunk each. Handing them over one call per segment cost the relay's
downloads a call through every layer above per 1,240 bytes; joined, it is one per read.
Checked against a model of the held list, whatever the chunk sizes, the join limit and where
the reader pauses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .tcp_harness import Net, connected_pair

READERS = st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), min_size=1, max_size=40)


class JoinedTakeTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        chunks=st.lists(
            st.sampled_from([1, 500, 1000, 1240, 3000]) | st.integers(1, 3000),
            min_size=1,
            max_size=60,
        ),
        join_up_to=st.sampled_from([0, 1, 1500, 2000, 4096, 65536]),
        reader=READERS,
    )
    def test_reads_are_the_held_chunks_joined_in_order(
        self, chunks: list[int], join_up_to: int, reader: list[tuple[bool, int]]
    ) -> None:
        _client, server = connected_pair(Net.pair())
        server.pause_reading()
        held = [bytes([i % 251]) * size for i, size in enumerate(chunks)]
        for chunk in held:
            server.hold(chunk)
        model = list(held)
        taken: list[bytes] = []
        script = iter(reader * 20)  # then it takes everything

        def take(chunk: bytes) -> bytes:
            nonlocal model
            n = 1
            while n < len(model) and len(b"".join(model[: n + 1])) <= join_up_to:
                n += 1
            # what fit within join_up_to joined, or the first chunk alone
            self.assertEqual(chunk, b"".join(model[:n]))
            self.assertTrue(n == 1 or len(chunk) <= join_up_to)
            model = model[n:]
            self.assertEqual(server.held, model)  # held is what was not handed over
            pause, cut = next(script, (False, 0))
            if not pause:
                taken.append(chunk)
                return b""
            taken.append(chunk[:cut])
            server.pause_reading()
            rest = chunk[cut:]
            if rest:
                model.insert(0, rest)
            return rest

        for _ in range(10_000):
            if not server.held:
                break
            server.resume_reading(take, join_up_to)
            self.assertEqual(server.held, model)
            self.assertEqual(server.held_bytes, sum(map(len, model)))
            if server.held:
                self.assertTrue(server.reading_paused)
        self.assertEqual(server.held, [])
        self.assertEqual(server.held_bytes, 0)
        self.assertEqual(b"".join(taken), b"".join(held))

    def test_without_a_limit_each_held_chunk_is_its_own_call(self) -> None:
        _client, server = connected_pair(Net.pair())
        server.pause_reading()
        held = [bytes([i]) * 1000 for i in range(10)]
        for chunk in held:
            server.hold(chunk)
        calls: list[bytes] = []
        server.resume_reading(lambda chunk: calls.append(chunk) or b"")
        self.assertEqual(calls, held)

    def test_a_read_sized_limit_joins_segments(self) -> None:
        _client, server = connected_pair(Net.pair())
        server.pause_reading()
        held = [bytes([i % 256]) * 1240 for i in range(200)]
        for chunk in held:
            server.hold(chunk)
        calls: list[bytes] = []
        server.resume_reading(lambda chunk: calls.append(chunk) or b"", 65536)
        self.assertEqual([len(c) for c in calls], [52 * 1240, 52 * 1240, 52 * 1240, 44 * 1240])
        self.assertEqual(b"".join(calls), b"".join(held))

    def test_a_read_fills_the_limit_exactly(self) -> None:
        _client, server = connected_pair(Net.pair())
        server.pause_reading()
        for _ in range(10):
            server.hold(b"x" * 1024)
        calls: list[int] = []
        server.resume_reading(lambda chunk: calls.append(len(chunk)) or b"", 4096)
        self.assertEqual(calls, [4096, 4096, 2048])
