"""The funnel-tw command and the key helpers behind it, including interop with the real `wg`."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import funnel_tw
from funnel_tw.cli import main
from funnel_tw.config import ConfigError, load_node_config
from funnel_tw.keys import (
    decode_key,
    encode_key,
    generate_preshared_key,
    generate_private_key,
    public_key,
)

# RFC 7748 section 6.1, Alice.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")

PROJECT_ROOT = str(Path(funnel_tw.__file__).resolve().parent.parent)


class Run:
    """What one call of main() returned and printed."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr


def run(argv: list[str], stdin: str = "", stdout: io.TextIOBase | None = None) -> Run:
    """Call main() with the standard streams swapped for strings."""
    out = io.StringIO() if stdout is None else stdout
    err = io.StringIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = main(argv)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return Run(code, out.getvalue() if isinstance(out, io.StringIO) else "", err.getvalue())


class KeyTests(SynchronousTestCase):
    def test_generate_private_key_is_clamped(self) -> None:
        """The bits `wg genkey` clamps are clamped, so the two tools write the same kind of key."""
        keys = {generate_private_key() for _ in range(64)}
        self.assertEqual(len(keys), 64)
        for key in keys:
            self.assertEqual(len(key), 32)
            self.assertEqual(key[0] & 7, 0)
            self.assertEqual(key[31] & 0x80, 0)
            self.assertEqual(key[31] & 0x40, 0x40)

    def test_preshared_key_is_random(self) -> None:
        keys = {generate_preshared_key() for _ in range(64)}
        self.assertEqual(len(keys), 64)
        self.assertEqual({len(key) for key in keys}, {32})
        # Not clamped: over 64 keys some low bit of byte 0 is set.
        self.assertTrue(any(key[0] & 7 for key in keys))

    def test_public_key_rfc7748(self) -> None:
        self.assertEqual(public_key(ALICE), ALICE_PUB)
        self.assertRaises(ValueError, public_key, ALICE[:31])

    def test_encode_decode(self) -> None:
        text = encode_key(ALICE)
        self.assertEqual(text, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
        self.assertEqual(decode_key(text), ALICE)
        self.assertRaises(ValueError, encode_key, b"\0" * 31)

    def test_decode_rejects(self) -> None:
        """Only what wg accepts: 44 characters, one '=', canonical, base64 alphabet."""
        good = encode_key(ALICE)
        for bad, why in [
            ("", "got 0 characters"),
            (good[:-1], "got 43 characters"),
            (good + "=", "got 45 characters"),
            (good[:-2] + "==", "got 44 characters"),
            (good[:-2] + "p=", "not canonical"),  # 'o' -> 'p' sets a padding bit
            ("!" + good[1:], "not base64"),
            ("é" + good[1:], "not base64"),
            (" " + good[1:], "not base64"),
        ]:
            error = self.assertRaises(ValueError, decode_key, bad)
            self.assertIn(why, str(error))
            self.assertTrue(str(error).startswith("not a valid key"), str(error))


class CommandTests(SynchronousTestCase):
    def test_genkey(self) -> None:
        result = run(["genkey"])
        self.assertEqual((result.code, result.stderr), (0, ""))
        self.assertEqual(len(result.stdout), 45)
        self.assertTrue(result.stdout.endswith("=\n"))
        key = decode_key(result.stdout.strip())
        self.assertEqual((key[0] & 7, key[31] & 0xC0), (0, 0x40))
        self.assertNotEqual(run(["genkey"]).stdout, result.stdout)

    def test_genpsk(self) -> None:
        result = run(["genpsk"])
        self.assertEqual((result.code, result.stderr), (0, ""))
        self.assertEqual(len(decode_key(result.stdout.removesuffix("\n"))), 32)
        self.assertNotEqual(run(["genpsk"]).stdout, result.stdout)

    def test_genkey_warns_about_world_readable_file(self) -> None:
        """Like wg: a key written to a file others can read gets a warning, and is written."""
        for mode, warned in [(0o644, True), (0o640, False), (0o600, False)]:
            path = self.mktemp()
            Path(path).touch(mode=mode)
            os.chmod(path, mode)
            with open(path, "w") as f:
                result = run(["genkey"], stdout=f)
            self.assertEqual(result.code, 0)
            self.assertEqual("Warning: writing to world accessible file." in result.stderr, warned)
            self.assertEqual(len(decode_key(Path(path).read_text().strip())), 32)

    def test_pubkey(self) -> None:
        result = run(["pubkey"], stdin=encode_key(ALICE) + "\n")
        self.assertEqual(
            (result.code, result.stdout, result.stderr), (0, encode_key(ALICE_PUB) + "\n", "")
        )
        # Surrounding whitespace is ignored.
        result = run(["pubkey"], stdin=f"  \n{encode_key(ALICE)}\r\n\n")
        self.assertEqual(result.stdout, encode_key(ALICE_PUB) + "\n")

    def test_pubkey_invalid(self) -> None:
        for text in [
            "",
            "garbage\n",
            encode_key(ALICE)[:-2] + "p=",
            encode_key(ALICE) + "x" * 5000,
        ]:
            result = run(["pubkey"], stdin=text)
            self.assertEqual(result.code, 1)
            self.assertEqual(result.stdout, "")
            self.assertTrue(
                result.stderr.startswith("funnel-tw pubkey: not a valid key"), result.stderr
            )
            self.assertNotIn("Traceback", result.stderr)

    def test_usage(self) -> None:
        self.assertEqual(run([]).code, 2)
        result = run(["frobnicate"])
        self.assertEqual(result.code, 2)
        self.assertIn("invalid choice", result.stderr)
        self.assertEqual(run(["--help"]).code, 0)
        self.assertEqual(run(["check-config"]).code, 2)
        self.assertEqual(run(["check-config", "x", "--node", "--relay"]).code, 2)

    def test_demo_is_delegated(self) -> None:
        """`demo ...` hands every argument, --help included, to funnel_tw.demo.main."""
        calls: list[list[str]] = []

        def demo_main(argv: list[str]) -> int:
            calls.append(argv)
            return 7

        fake = types.ModuleType("funnel_tw.demo")
        fake.main = demo_main  # type: ignore[attr-defined]
        with _module("funnel_tw.demo", fake):
            self.assertEqual(run(["demo", "--help", "x"]).code, 7)
            self.assertEqual(run(["demo"]).code, 7)
        self.assertEqual(calls, [["--help", "x"], []])


@contextmanager
def _module(name: str, module: types.ModuleType) -> Iterator[None]:
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved


class CheckConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)

    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    def node_ini(self) -> str:
        return self.write(
            "node.ini",
            f"[node]\nprivate-key = {encode_key(ALICE)}\naddress = 100.64.0.2/32\n"
            f"[peer relay]\npublic-key = {encode_key(BOB_PUB)}\nallowed-ips = 100.64.0.1/32\n"
            "[serve 443]\n/ = 8080\n[serve 8443]\ntcp-forward = 9443\n",
        )

    def relay_ini(self) -> str:
        return self.write(
            "relay.ini",
            "[relay]\nprivate-key-file = relay.key\naddress = 100.64.0.1/32\n"
            "public-ports = 443, 8443\n"
            f"[node home]\npublic-key = {encode_key(ALICE_PUB)}\nallowed-ips = 100.64.0.2/32\n"
            "hostnames = a.example\npeerapi = 100.64.0.2:41642\n",
        )

    def test_node_ok(self) -> None:
        path = self.node_ini()
        for argv in (["check-config", path], ["check-config", "--node", path]):
            result = run(argv)
            self.assertEqual(
                (result.code, result.stdout, result.stderr),
                (0, f"{path}: ok (node, 1 peer, 2 serve ports)\n", ""),
            )

    def test_relay_ok(self) -> None:
        self.write("relay.key", encode_key(generate_private_key()))
        path = self.relay_ini()
        for argv in (["check-config", path], ["check-config", path, "--relay"]):
            result = run(argv)
            self.assertEqual(
                (result.code, result.stdout, result.stderr),
                (0, f"{path}: ok (relay, 1 node, 2 public ports)\n", ""),
            )

    def test_warnings_printed_exit_zero(self) -> None:
        """Warnings go to stderr as FILE:LINE lines, like errors; the file is usable: exit 0."""
        path = self.write(
            "node.ini",
            f"[node]\nprivate-key = {encode_key(ALICE)}\naddress = 100.64.0.2/32\n"
            f"[peer relay]\npublic-key = {encode_key(BOB_PUB)}\nallowed-ips = 100.64.0.1/32\n"
            "[serve 443]\n/ = 8080\nfunnel = yes\n",
        )
        result = run(["check-config", path])
        self.assertEqual(
            (result.code, result.stdout),
            (0, f"{path}: ok (node, 1 peer, 1 serve port, 1 warning)\n"),
        )
        self.assertEqual(
            result.stderr,
            f"{path}:9: [serve 443] funnel: no [peer] has funnel-ingress = yes, so no relay"
            " can bring internet clients to it\n",
        )
        self.assertEqual(result.stderr.splitlines(), list(load_node_config(path).warnings))

    def test_ingress_peer_warning(self) -> None:
        path = self.write(
            "node.ini",
            f"[node]\nprivate-key = {encode_key(ALICE)}\naddress = 100.64.0.2/32\n"
            "hostname = a.example, *.b.example\n"
            f"[peer relay]\npublic-key = {encode_key(BOB_PUB)}\nallowed-ips = 100.64.0.1/32\n"
            "funnel-ingress = yes\n"
            "[serve a.example:443]\n/ = 8080\nfunnel = yes\n"
            "[serve *.b.example:443]\n/ = 8081\n",
        )
        result = run(["check-config", path])
        self.assertEqual(
            (result.code, result.stdout),
            (0, f"{path}: ok (node, 1 peer, 2 serve ports, 1 warning)\n"),
        )
        self.assertEqual(
            result.stderr,
            f"{path}:5: [peer relay]: funnel-ingress peer without persistent-keepalive, and no"
            " endpoint to reach it: a node behind NAT is unreachable for it"
            " (add persistent-keepalive = 25)\n",
        )

    def test_errors_all_printed(self) -> None:
        """Every error line goes to stderr, exactly as ConfigError lists them; exit 1."""
        path = self.write(
            "node.ini",
            "[node]\nprivate-key = nope\naddress = 1.2.3.4/99\nmtu = big\n[peer]\n",
        )
        expected = self.assertRaises(ConfigError, load_node_config, path).errors
        self.assertEqual(len(expected), 4)
        result = run(["check-config", path])
        self.assertEqual((result.code, result.stdout), (1, ""))
        self.assertEqual(result.stderr, "".join(line + "\n" for line in expected))
        self.assertIn(f"{path}:3: [node] address: '1.2.3.4/99'", result.stderr)

    def test_tcp_buffer_keys(self) -> None:
        """The userspace stack's caps: each wrong one at its FILE:LINE, tun refuses them."""
        node = f"[node]\nprivate-key = {encode_key(ALICE)}\naddress = 100.64.0.2/32\n"
        path = self.write(
            "node.ini", node + "tcp-receive-buffer-max = 100M\ntcp-send-buffer-max = 1M\n"
        )
        result = run(["check-config", path])
        self.assertEqual((result.code, result.stdout), (1, ""))
        self.assertEqual(
            result.stderr,
            f"{path}:4: [node] tcp-receive-buffer-max: 100M is more than 64M\n"
            f"{path}:5: [node] tcp-send-buffer-max: 1M is less than 2M (the send buffer a"
            " connection starts with)\n",
        )
        path = self.write("tun.ini", node + "network = tun\ntcp-memory = 1G\n")
        result = run(["check-config", path])
        self.assertEqual(
            (result.code, result.stderr),
            (
                1,
                f"{path}:5: [node] tcp-memory: applies to network = userspace only (tun: the"
                " kernel's TCP)\n",
            ),
        )
        self.write("relay.key", encode_key(generate_private_key()))
        path = self.write(
            "relay.ini",
            "[relay]\nprivate-key-file = relay.key\naddress = 100.64.0.1/32\n"
            "tcp-receive-buffer-max = 16M\ntcp-send-buffer-max = 16M\ntcp-memory = 1G\n",
        )
        result = run(["check-config", path])
        self.assertEqual((result.code, result.stderr), (0, ""))

    def test_forced_kind(self) -> None:
        """--relay reads a node.ini as a relay.ini, and says what is wrong with that."""
        result = run(["check-config", "--relay", self.node_ini()])
        self.assertEqual(result.code, 1)
        self.assertIn(": [relay]: missing section", result.stderr)

    def test_missing_file(self) -> None:
        path = str(self.dir / "nope.ini")
        result = run(["check-config", path])
        self.assertEqual(
            (result.code, result.stdout, result.stderr),
            (1, "", f"{path}:0: cannot read: No such file or directory\n"),
        )

    def test_missing_key_file(self) -> None:
        path = self.relay_ini()
        result = run(["check-config", path])
        self.assertEqual(result.code, 1)
        key = os.path.abspath(self.dir / "relay.key")
        self.assertEqual(
            result.stderr, f"{path}:2: [relay] private-key-file: {key} does not exist\n"
        )


def _wg() -> str:
    """The wg binary, or skip (or fail, when FUNNEL_TW_REQUIRE_INTEROP=1 says it must run)."""
    wg = shutil.which("wg")
    if wg is None:
        if os.environ.get("FUNNEL_TW_REQUIRE_INTEROP") == "1":
            raise AssertionError(
                "wg (wireguard-tools) is not installed and FUNNEL_TW_REQUIRE_INTEROP=1"
            )
        raise SkipTest("wg (wireguard-tools) is not installed")
    return wg


def _call(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=env)


def _ours(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return _call([sys.executable, "-m", "funnel_tw", *args], stdin)


class WgInteropTests(SynchronousTestCase):
    """The real `wg` and `python -m funnel_tw` agree on keys, in both directions."""

    def setUp(self) -> None:
        self.wg = _wg()

    def wg_pubkey(self, private: str) -> str:
        result = _call([self.wg, "pubkey"], private)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def our_pubkey(self, private: str) -> str:
        result = _ours("pubkey", stdin=private)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_wg_genkey_to_our_pubkey(self) -> None:
        for _ in range(3):
            private = _call([self.wg, "genkey"]).stdout
            self.assertEqual(len(private), 45)
            self.assertEqual(self.our_pubkey(private), self.wg_pubkey(private))

    def test_our_genkey_to_wg_pubkey(self) -> None:
        for _ in range(3):
            result = _ours("genkey")
            self.assertEqual((result.returncode, result.stderr), (0, ""))
            private = result.stdout
            self.assertEqual(self.wg_pubkey(private), self.our_pubkey(private))
            self.assertEqual(base64.b64decode(private)[0] & 7, 0)

    def test_unclamped_key(self) -> None:
        """A genpsk (unclamped) key used as a private key: both tools clamp it the same way."""
        psk = _ours("genpsk").stdout
        self.assertEqual(self.wg_pubkey(psk), self.our_pubkey(psk))
        wg_psk = _call([self.wg, "genpsk"]).stdout
        self.assertEqual(len(decode_key(wg_psk.strip())), 32)
        self.assertEqual(self.wg_pubkey(wg_psk), self.our_pubkey(wg_psk))

    def test_both_refuse_the_same_malformed_keys(self) -> None:
        good = encode_key(ALICE)
        for bad in [good[:-1] + "\n", good[:-2] + "p=\n", "!" + good[1:] + "\n", "\n"]:
            self.assertNotEqual(_call([self.wg, "pubkey"], bad).returncode, 0, bad)
            result = _ours("pubkey", stdin=bad)
            self.assertEqual(result.returncode, 1, bad)
            self.assertEqual(result.stdout, "")
