"""The inspector with a real relay and node (twistd processes, tests/e2e/harness.py): a
request through the relay appears in the JSON API and on the page, live, in headless
Chromium; Replay, from curl and from a click on the page, makes the backend see it again."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests._support import free_port, wait_until_blocking
from tests.e2e import harness
from tests.interop.netns import require_interop

from .cdp import CHROMIUM, Browser

SCREENSHOT = harness.REPO_ROOT / "docs" / "img" / "inspector.png"
NAME = "hooks.example.com"


def api(port: int, path: str, *extra: str) -> tuple[int, bytes]:
    """curl against the inspector: (HTTP status, body)."""
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            *extra,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    body, _, status = proc.stdout.rpartition(b"\n")
    return int(status or 0), body


class InspectorE2ETests(SynchronousTestCase):
    def setUp(self) -> None:
        harness.require_tools(self, "curl")
        self.port = free_port(socket.SOCK_STREAM)
        self.funnel = harness.Funnel(self.addCleanup)
        self.node = self.funnel.add_node("hooks", [NAME])
        self.node.options["inspect-listen"] = f"127.0.0.1:{self.port}"
        self.node.options["inspect-body-limit"] = "16K"
        self.funnel.start()
        assert self.node.daemon is not None
        self.node.daemon.wait_log(r"request inspector on http://127\.0\.0\.1:\d+/")

    def through(self, path: str, *extra: str) -> harness.CurlResult:
        result = self.funnel.curl(self.node, path=path, extra=extra)
        self.assertEqual(result.status, 200, result)
        return result

    def backend_saw(self, line: str) -> int:
        assert self.node.backend is not None
        return self.node.backend.log().count(line)

    def entry_for(self, uri: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def there() -> bool:
            _, body = api(self.port, "/api/requests/http")
            found[:] = [
                e
                for e in json.loads(body)["requests"]
                if e["request"]["uri"] == uri and e["response"]
            ]
            return bool(found)

        wait_until_blocking(there, 10, f"{uri} in the inspector")
        return found[0]

    def test_api_with_curl_and_replay(self) -> None:
        path = f"/hook/api-{os.urandom(3).hex()}"
        self.through(path, "-H", "Authorization: Bearer e2e-secret", "--data-binary", "ping")
        e = self.entry_for(path)
        self.assertTrue(e["funnel"])
        self.assertEqual(e["mount"], "/")
        self.assertEqual(e["request"]["headers"]["Authorization"], ["Bearer [masked]"])
        self.assertTrue(base64.b64decode(e["request"]["raw"]).endswith(b"\r\n\r\nping"))
        line = f'"POST {path} HTTP/1.1" 200'
        self.assertEqual(self.backend_saw(line), 1)
        status, _ = api(
            self.port,
            "/api/requests/http",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"id": e["id"]}),
        )
        self.assertEqual(status, 204)
        wait_until_blocking(lambda: self.backend_saw(line) == 2, 10, "the replay at the backend")
        status, body = api(self.port, f"/api/requests/http/{e['id']}")
        self.assertEqual((status, json.loads(body)["id"]), (200, e["id"]))
        # the inspector is not reachable through the relay: the node's site has no such path
        result = self.funnel.curl(self.node, path="/api/requests/http")
        self.assertNotIn(e["id"], result.body)

    def test_page_live_open_replay_in_chromium(self) -> None:
        if not os.path.exists(CHROMIUM):
            require_interop(self, "chromium not installed (apt-get install chromium)")
        browser = Browser(self.funnel.dir, width=1440, height=860)
        self.addCleanup(browser.close)
        browser.go(f"http://127.0.0.1:{self.port}/")
        browser.wait("document.getElementById('live').textContent === 'live'", what="live")
        # a few requests of several kinds, made after the page is open: they arrive live
        marker = os.urandom(3).hex()
        self.through(f"/orders?page=2&sort=new&m={marker}")
        self.through(
            f"/signup?m={marker}",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
            "name=Ada+Lovelace&plan=pro",
        )
        path = f"/hooks/github?m={marker}"
        self.through(
            path,
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-GitHub-Event: push",
            "-H",
            "Authorization: Bearer ghp_not_really",
            "--data-binary",
            json.dumps(
                {
                    "ref": "refs/heads/main",
                    "commits": [{"id": "4f2a9c", "message": "Fix"}],
                    "repository": {"full_name": "ada/engine"},
                }
            ),
        )
        row = browser.wait(
            f"[...document.querySelectorAll('#list tbody tr')].findIndex("
            f"r => r.cells[3].textContent === {json.dumps(path)}"
            " && r.cells[4].textContent === '200') + 1",
            what="the request on the page",
        )
        browser.click(f"#list tbody tr:nth-child({row})")
        browser.wait(
            f"document.getElementById('d-title').textContent === 'POST ' + {json.dumps(path)}",
            what="its details",
        )
        text = browser.js("document.getElementById('detail').innerText")
        self.assertIn('"full_name": "ada/engine"', text)  # pretty JSON
        headers = browser.js("document.getElementById('d-req-headers').innerText")
        self.assertIn("Bearer [masked]", headers)  # (this backend echoes it in its body)
        self.assertNotIn("ghp_not_really", headers)
        line = f'"POST {path} HTTP/1.1" 200'
        self.assertEqual(self.backend_saw(line), 1)
        browser.click("#replay")
        browser.wait(
            "document.getElementById('d-message').textContent.startsWith('replayed')",
            what="the replay answer",
        )
        wait_until_blocking(lambda: self.backend_saw(line) == 2, 10, "the replay at the backend")
        browser.wait(
            f"[...document.querySelectorAll('#list tbody tr')].filter("
            f"r => r.cells[3].textContent === {json.dumps(path)}).length === 2",
            what="the replay on the page",
        )
        self.assertIn("replay", browser.js("document.querySelector('#list tbody tr').innerText"))
        shot = Path(self.funnel.dir) / "inspector.png"
        browser.screenshot(shot)
        self.assertTrue(shot.read_bytes().startswith(b"\x89PNG"))
        if os.environ.get("FUNNEL_TW_SCREENSHOTS") == "1" or not SCREENSHOT.exists():
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
        # Copy as curl: the command for the public name, the secret still masked
        browser.click("#curl")
        command = browser.wait("document.getElementById('curl-text').value", what="curl")
        self.assertTrue(
            command.startswith(
                f"curl -X POST 'https://{NAME}:{self.funnel.public_port}/hooks/github?m={marker}'"
            ),
            command,
        )
        self.assertIn("-H 'Authorization: Bearer [masked]'", command)
        # Replay with changes: another path; the masked header gets its real value back
        browser.click("#edit")
        browser.wait("!document.getElementById('editor').hidden", what="the editor")
        edited = f"/hooks/edited-{marker}"
        browser.js(
            "(() => { const t = document.getElementById('edit-text');"
            f" t.value = t.value.replace({json.dumps(path)}, {json.dumps(edited)}); }})()"
        )
        browser.click("#edit-send")
        wait_until_blocking(
            lambda: self.backend_saw(f'"POST {edited} HTTP/1.1" 200') == 1, 10, "the edited replay"
        )
        answer = base64.b64decode(self.entry_for(edited)["response"]["body"]["data"])
        self.assertIn(b"Authorization: Bearer ghp_not_really", answer)  # the backend echoes it
        # filters: by path, by status, by method
        browser.click("#f-path")
        browser.call("Input.insertText", {"text": "signup"})
        browser.wait(
            "document.querySelectorAll('#list tbody tr').length === 1", what="the path filter"
        )
        # a form body is shown as its fields
        browser.click("#list tbody tr")
        browser.wait(
            "document.getElementById('d-req-body').innerText.includes('form fields')",
            what="the form fields",
        )
        self.assertIn("Ada Lovelace", browser.js("document.getElementById('d-req-body').innerText"))
        # a binary body as a hex dump
        binary = Path(self.funnel.dir) / "binary"
        binary.write_bytes(bytes(range(256)))
        self.through(f"/upload?m={marker}", "--data-binary", f"@{binary}")
        browser.js(
            "(() => { const f = document.getElementById('f-path'); f.value = 'upload';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        browser.wait("document.querySelectorAll('#list tbody tr').length === 1", what="upload")
        browser.click("#list tbody tr")
        browser.wait(
            "document.getElementById('d-req-body').innerText.includes('binary (hex)')",
            what="the hex dump",
        )
        self.assertIn(
            "00000000  00 01 02 03", browser.js("document.getElementById('d-req-body').innerText")
        )
        browser.js("document.getElementById('f-path').value = ''")
        browser.js(
            "(() => { const s = document.getElementById('f-method'); s.value = 'GET';"
            " s.dispatchEvent(new Event('input')); })()"
        )
        rows = browser.js(
            "[...document.querySelectorAll('#list tbody tr')].map(r => r.cells[2].textContent)"
        )
        self.assertEqual(set(rows), {"GET"})
