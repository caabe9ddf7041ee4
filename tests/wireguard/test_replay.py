"""wireguard-go's replay/replay_test.go (ported from the kernel's), against both
ReplayFilters: the pure-Python one and the C one (when built)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw.wireguard.replay import WINDOW_SIZE, PyReplayFilter
from funnel_tw.wireguard.transport_key import ReplayFilterType

from .test_transport_key import _require_c

# replay_test.go passes its own limit, not the protocol's RejectAfterMessages.
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 4) - 1
T_LIM = WINDOW_SIZE + 1


def _c_filter_type() -> Callable[[], ReplayFilterType] | None:
    try:
        from funnel_tw.wireguard._transport import ReplayFilter
    except ImportError:
        return None
    return ReplayFilter


def _c_filter() -> ReplayFilterType:
    make = _c_filter_type()
    assert make is not None
    return make()


class ReplayTests(SynchronousTestCase):
    """On the pure-Python filter; CReplayTests runs the same on the C one."""

    def make(self) -> ReplayFilterType:
        return PyReplayFilter()

    def setUp(self) -> None:
        self.filter = self.make()
        self.number = 0

    def T(self, n: int, expected: bool) -> None:
        self.number += 1
        self.assertEqual(
            self.filter.validate(n, REJECT_AFTER_MESSAGES),
            expected,
            f"case {self.number}: counter {n} expected {expected}",
        )

    def reset(self) -> None:
        self.filter = self.make()
        self.number = 0

    def test_window_size(self) -> None:
        self.assertEqual(WINDOW_SIZE, 8128)
        self.assertEqual(T_LIM, 8129)

    def test_numbered_cases(self) -> None:
        T = self.T
        T(0, True)  # 1
        T(1, True)  # 2
        T(1, False)  # 3
        T(9, True)  # 4
        T(8, True)  # 5
        T(7, True)  # 6
        T(7, False)  # 7
        T(T_LIM, True)  # 8
        T(T_LIM - 1, True)  # 9
        T(T_LIM - 1, False)  # 10
        T(T_LIM - 2, True)  # 11
        T(2, True)  # 12
        T(2, False)  # 13
        T(T_LIM + 16, True)  # 14
        T(3, False)  # 15
        T(T_LIM + 16, False)  # 16
        T(T_LIM * 4, True)  # 17
        T(T_LIM * 4 - (T_LIM - 1), True)  # 18
        T(10, False)  # 19
        T(T_LIM * 4 - T_LIM, False)  # 20
        T(T_LIM * 4 - (T_LIM + 1), False)  # 21
        T(T_LIM * 4 - (T_LIM - 2), True)  # 22
        T(T_LIM * 4 + 1 - T_LIM, False)  # 23
        T(0, False)  # 24
        T(REJECT_AFTER_MESSAGES, False)  # 25
        T(REJECT_AFTER_MESSAGES - 1, True)  # 26
        T(REJECT_AFTER_MESSAGES, False)  # 27
        T(REJECT_AFTER_MESSAGES - 1, False)  # 28
        T(REJECT_AFTER_MESSAGES - 2, True)  # 29
        T(REJECT_AFTER_MESSAGES + 1, False)  # 30
        T(REJECT_AFTER_MESSAGES + 2, False)  # 31
        T(REJECT_AFTER_MESSAGES - 2, False)  # 32
        T(REJECT_AFTER_MESSAGES - 3, True)  # 33
        T(0, False)  # 34
        self.assertEqual(self.number, 34)

    def test_bulk_1(self) -> None:
        for i in range(1, WINDOW_SIZE + 1):
            self.T(i, True)
        self.T(0, True)
        self.T(0, False)

    def test_bulk_2(self) -> None:
        for i in range(2, WINDOW_SIZE + 2):
            self.T(i, True)
        self.T(1, True)
        self.T(0, False)

    def test_bulk_3(self) -> None:
        for i in range(WINDOW_SIZE + 1, 0, -1):
            self.T(i, True)

    def test_bulk_4(self) -> None:
        for i in range(WINDOW_SIZE + 2, 1, -1):
            self.T(i, True)
        self.T(0, False)

    def test_bulk_5(self) -> None:
        for i in range(WINDOW_SIZE, 0, -1):
            self.T(i, True)
        self.T(WINDOW_SIZE + 1, True)
        self.T(0, False)

    def test_bulk_6(self) -> None:
        for i in range(WINDOW_SIZE, 0, -1):
            self.T(i, True)
        self.T(0, True)
        self.T(WINDOW_SIZE + 1, True)

    def test_limit_is_exclusive(self) -> None:
        self.assertFalse(self.filter.validate(10, 10))
        self.assertTrue(self.filter.validate(9, 10))
        # A rejected over-limit counter must not have moved the window.
        self.assertTrue(self.filter.validate(0, 10))

    def test_big_jump_clears_the_ring(self) -> None:
        # Fill a block, then jump far ahead: the stale bits of the reused slot must be gone.
        for i in range(64):
            self.T(i, True)
        jump = 128 * 64 * 3 + 5  # lands in the same ring slot as block 0 after wrapping
        self.T(jump, True)
        self.T(jump - 5, True)
        self.T(jump - 1, True)
        self.T(jump - 1, False)


class CReplayTests(ReplayTests):
    def make(self) -> ReplayFilterType:
        _require_c()
        return _c_filter()


#: every filter on this machine: the property below runs on each
FILTERS: list[Callable[[], ReplayFilterType]] = [PyReplayFilter]
if _c_filter_type() is not None:
    FILTERS.append(_c_filter)


class ReplayPropertyTests(SynchronousTestCase):
    @given(
        st.lists(st.integers(min_value=-WINDOW_SIZE - 200, max_value=300), max_size=300),
        st.sampled_from(FILTERS),
    )
    def test_matches_a_reference_window(
        self, deltas: list[int], make: Callable[[], ReplayFilterType]
    ) -> None:
        """Accept iff unseen and at most WINDOW_SIZE behind the greatest accepted counter."""
        f = make()
        seen: set[int] = set()
        greatest = 0
        for delta in deltas:
            counter = max(0, greatest + delta)
            expected = counter not in seen and greatest - counter <= WINDOW_SIZE
            got = f.validate(counter, REJECT_AFTER_MESSAGES)
            self.assertEqual(got, expected, f"counter {counter}, greatest {greatest}")
            if got:
                seen.add(counter)
                greatest = max(greatest, counter)
