"""The example plugins' own test suites (examples/*/PKG/test), run as their authors run them:
``python -m twisted.trial PKG`` from the example's folder, with funnel_tw.testing only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PACKAGES = {"echo-handler": "funnel_tw_echo", "tcp-proxy-handler": "funnel_tw_tcpproxy"}


class ExampleSuites(SynchronousTestCase):
    def run_example(self, folder: str) -> None:
        root = EXAMPLES / folder
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{EXAMPLES.parent}"}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted.trial",
                "--temp-directory",
                os.path.abspath(self.mktemp()),  # not under the example's folder
                PACKAGES[folder],
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output[-3000:])
        self.assertIn("PASSED", output)

    def test_every_example_is_listed(self) -> None:
        self.assertEqual(sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()), sorted(PACKAGES))

    def test_echo_handler(self) -> None:
        self.run_example("echo-handler")

    def test_tcp_proxy_handler(self) -> None:
        self.run_example("tcp-proxy-handler")
