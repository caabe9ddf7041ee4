"""An unusable state-dir is one clear line at start, on both daemons (twistd processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from funnel_tw import keys
from funnel_tw.options import prepare_state_dir

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class PrepareStateDirTests(TestCase):
    def test_made_private_and_usable(self) -> None:
        path = Path(self.mktemp()) / "a" / "state"
        prepare_state_dir(path, Path("node.ini"), "node")
        self.assertEqual(path.stat().st_mode & 0o777, 0o700)
        self.assertEqual(list(path.iterdir()), [])  # the probe file is gone

    def test_unwritable_kinds(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        (base / "file").write_text("")
        for bad in (base / "file" / "state", Path("/proc/funnel-tw-state")):
            e = self.assertRaises(SystemExit, prepare_state_dir, bad, Path("n.ini"), "node")
            self.assertIn(f"n.ini: [node] state-dir = {bad}: not writable", str(e))
            self.assertIn("StateDirectory=", str(e))


class DaemonTests(TestCase):
    def run_daemon(self, plugin: str, text: str) -> subprocess.CompletedProcess[str]:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "blocker").write_text("a file where a folder should be")
        (folder / "d.ini").write_text(text)
        return subprocess.run(
            [*_TWISTD, "-n", "--pidfile=", plugin, "--config", "d.ini"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )

    def check(self, result: subprocess.CompletedProcess[str], section: str) -> None:
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn(f"d.ini: [{section}] state-dir = ", output)
        self.assertIn("blocker/state: not writable (Not a directory)", output)
        self.assertNotIn("Traceback", output)

    def test_node(self) -> None:
        key = keys.encode_key(keys.generate_private_key())
        ini = f"[node]\nprivate-key = {key}\naddress = 100.64.0.2/32\nhostname = a.example.com\n"
        self.check(self.run_daemon("funnel", ini + "state-dir = blocker/state\n"), "node")

    def test_relay(self) -> None:
        key = keys.encode_key(keys.generate_private_key())
        ini = (
            f"[relay]\nprivate-key = {key}\naddress = 100.64.0.1/32\npublic-ports = 8443\n"
            "state-dir = blocker/state\n"
        )
        self.check(self.run_daemon("funnel-relay", ini), "relay")
