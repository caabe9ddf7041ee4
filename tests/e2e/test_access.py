"""Access policies through the real relay and node processes: the client address the relay
reports (curl --interface 127.0.0.N), basic auth from a file made by Apache's htpasswd, over
HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness
from tests.interop.netns import require_interop

NAME = "access.e2e.test"
PAGE = "the family photos"


class AccessThroughTheFunnel(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        if shutil.which("htpasswd") is None:
            require_interop(self, "htpasswd (apache2-utils) not installed")
        self.port = harness.free_port()
        self.funnel = harness.Funnel(self.addCleanup, more_public_ports=[self.port])
        folder = self.funnel.dir / "access"
        folder.mkdir()
        self.htpasswd = folder / "family.htpasswd"
        subprocess.run(
            ["htpasswd", "-cbB", str(self.htpasswd), "grandma", "s3cret pass"],
            check=True,
            capture_output=True,
        )
        self.htpasswd.chmod(0o600)
        self.node = self.funnel.add_node(
            "home",
            [NAME],
            extra_serve=f"""[access family]
allow = 127.0.0.2/32
basic-auth-file = {self.htpasswd}

[serve {self.port}]
funnel = yes
access = family
/ = text:{PAGE}
""",
        )
        self.funnel.start()

    def fetch(self, source: str, *extra: str, http2: bool = False) -> harness.CurlResult:
        return self.funnel.curl(
            self.node,
            port=self.port,
            http2=http2,
            extra=["--interface", source, *extra],
        )

    def test_address_then_credentials(self) -> None:
        for http2 in (False, True):
            ok = self.fetch("127.0.0.2", "-u", "grandma:s3cret pass", http2=http2)
            self.assertEqual((ok.returncode, ok.status), (0, 200), ok.stderr)
            self.assertIn(PAGE, ok.body)
            asked = self.fetch("127.0.0.2", http2=http2)
            self.assertEqual(asked.status, 401)
            self.assertNotIn(PAGE, asked.body)
            wrong = self.fetch("127.0.0.2", "-u", "grandma:guess", http2=http2)
            self.assertEqual(wrong.status, 401)
            elsewhere = self.fetch("127.0.0.3", "-u", "grandma:s3cret pass", http2=http2)
            self.assertEqual(elsewhere.status, 403)  # the relay reported 127.0.0.3
            self.assertNotIn(PAGE, elsewhere.body)
        # the open port of the same node is not affected
        result = self.funnel.curl(self.node)
        self.assertEqual((result.returncode, result.status), (0, 200), result.stderr)
