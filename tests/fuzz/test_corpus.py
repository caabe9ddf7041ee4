"""Every fuzz target over its seed corpus and every saved crash, without atheris.

A crash the fuzzer found is saved as tests/fuzz/crashes/<target>-<hash>; from then on this
test replays it, so it stays fixed. A target's documented errors are caught inside the target:
any exception that reaches here is a finding.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from .targets import TARGETS

HERE = Path(__file__).parent
SEEDS = HERE / "corpus"
CRASHES = HERE / "crashes"


def inputs(name: str) -> list[Path]:
    """The seeds of target ``name`` and the crashes saved for it."""
    seeds = sorted((SEEDS / name).iterdir()) if (SEEDS / name).is_dir() else []
    crashes = sorted(CRASHES.glob(f"{name}-*")) if CRASHES.is_dir() else []
    return seeds + crashes


class CorpusTests(SynchronousTestCase):
    def replay(self, name: str) -> None:
        target = TARGETS[name]
        failures = []
        for path in inputs(name):
            try:
                target(path.read_bytes())
            except Exception:
                failures.append(f"{path.relative_to(HERE)}:\n{traceback.format_exc()}")
        if failures:
            self.fail("\n".join(failures))

    def test_every_target_has_seeds(self) -> None:
        """A target without seeds starts from nothing; a folder without a target is stale."""
        for name in TARGETS:
            self.assertTrue(list((SEEDS / name).iterdir()), name)
        self.assertEqual(sorted(p.name for p in SEEDS.iterdir()), sorted(TARGETS))

    def test_crashes_name_a_target(self) -> None:
        """Saved crashes are <target>-<hash>, so each is replayed by its target."""
        for path in CRASHES.iterdir() if CRASHES.is_dir() else []:
            self.assertTrue(any(path.name.startswith(f"{n}-") for n in TARGETS), path.name)


def _replay_test(name: str) -> object:
    def test(self: CorpusTests) -> None:
        self.replay(name)

    test.__doc__ = f"{name}: the seeds and saved crashes raise nothing undocumented."
    test.__name__ = f"test_{name}"
    return test


for _name in TARGETS:
    setattr(CorpusTests, f"test_{_name}", _replay_test(_name))
