"""[access NAME] sections: every key checked at load with FILE:LINE, htpasswd files made by
Apache's own htpasswd tool (Debian apache2-utils)."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import ip_network

from funnel_tw.config import HTTPSMounts, load_node_config
from funnel_tw.config.access import rate, read_htpasswd, size

from ._support import issue, make_ca
from .test_config import NODE, ConfigTestCase

BCRYPT = "alice:$2y$05$h/a.hztH7U2AayeTSLJxKu/RcRojuWWSy.G3HKtSWwrS31q/lFCfu\n"
TOKEN = "ci:sha256:" + "ab" * 32 + "\n"


class AccessConfigTests(ConfigTestCase):
    def test_full_policy_and_ports(self) -> None:
        self.write("staff.htpasswd", BCRYPT, 0o640)
        self.write("tokens", TOKEN, 0o600)
        self.write("hooks.txt", "# GitHub hooks\n192.30.252.0/22  # meta\n\n2001:db8::/48\n", 0o644)
        self.write("oidc.secret", "s3cret\n", 0o600)
        self.write("ca.pem", make_ca().cert_pem(), 0o644)
        path = self.write(
            "node.ini",
            NODE
            + """[access office]
allow = 198.51.100.0/24, 2001:db8::/48
allow-file = hooks.txt
deny = 203.0.113.7/32
basic-auth-file = staff.htpasswd
bearer-tokens-file = tokens
oidc-issuer = http://127.0.0.1:8080/
oidc-client-id = funnel
oidc-client-secret-file = oidc.secret
oidc-allow = alice@example.com, *@example.org
oidc-session-lifetime = 3600
forward-auth = http://127.0.0.1:9091/api/verify
client-ca-file = ca.pem
rate-limit = 20/s
max-request-body = 10M
[access hooks]
allow-file = hooks.txt
rate-limit = 30/m
rate-burst = 5
[serve 443]
access = office
/ = 8080
/admin/ = 9000
access /admin/ = hooks
[serve 8443]
tcp-forward = 127.0.0.1:9443
access = hooks
""",
        )
        config = load_node_config(path)
        office, hooks = config.access
        self.assertEqual(office.allow, (ip_network("198.51.100.0/24"), ip_network("2001:db8::/48")))
        self.assertEqual(office.oidc_issuer, "http://127.0.0.1:8080")
        self.assertEqual(office.oidc_allow, ("alice@example.com", "*@example.org"))
        self.assertEqual((office.rate_limit, office.rate_burst), (20.0, 20))
        self.assertEqual(office.max_request_body, 10 << 20)
        self.assertEqual((hooks.rate_limit, hooks.rate_burst), (0.5, 5))
        self.assertEqual(hooks.allow_file, self.dir.absolute() / "hooks.txt")
        web, tcp = config.serve
        self.assertEqual(web.access, "office")
        assert isinstance(web.handler, HTTPSMounts)
        self.assertEqual(web.handler.access, (("/admin/", "hooks"),))
        self.assertEqual(tcp.access, "hooks")

    def test_values(self) -> None:
        self.assertEqual([rate("2/s"), rate("60/m"), rate("36 / h")], [2.0, 1.0, 0.01])
        self.assertEqual([size("10M"), size("512k"), size("7")], [10 << 20, 512 << 10, 7])
        for bad in ("0/s", "2/d", "x/s", "2"):
            self.assertRaises(ValueError, rate, bad)
        for bad in ("10MB", "-1", "1.5M"):
            self.assertRaises(ValueError, size, bad)

    def test_errors_with_file_and_line(self) -> None:
        self.write("open.htpasswd", BCRYPT, 0o644)
        self.write("tokens", "ci:sha256:abcd\n", 0o600)
        self.write("bad.txt", "10.0.0.0/8\n10.0.0.1/8\n", 0o644)
        self.write("oidc.secret", "s\n", 0o644)
        self.assertErrors(
            NODE
            + """[access a]
allow = 10.0.0.0/33
deny = nonsense
allow-file = bad.txt
basic-auth-file = open.htpasswd
bearer-tokens-file = tokens
rate-limit = 5/d
max-request-body = lots
oidc-client-id = x
alow = 1.2.3.4/32
[access b]
oidc-issuer = http://accounts.example.com
oidc-client-secret-file = oidc.secret
[serve 443]
/ = 8080
access = nope
access /x/ = b
""",
            "5: [access a] allow: '10.0.0.0/33' is not an IP network (CIDR)",
            "6: [access a] deny: 'nonsense' is not an IP network (CIDR)",
            f"7: [access a] allow-file: {self.dir.absolute()}/bad.txt:2:"
            " '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
            f"8: [access a] basic-auth-file: {self.dir.absolute()}/open.htpasswd"
            " is readable by others; chmod 640 (or 600) it",
            f"9: [access a] bearer-tokens-file: {self.dir.absolute()}/tokens:1:"
            " not a NAME:sha256:HEX line (64 hex digits)",
            "10: [access a] rate-limit: '5/d' is not a rate (use N/s, N/m or N/h with N > 0)",
            "11: [access a] max-request-body: 'lots' is not a size"
            " (use a number of bytes, or with K, M or G)",
            "12: [access a] oidc-client-id: is only used with oidc-issuer",
            "13: [access a] alow: unknown key (did you mean 'allow'?)",
            "14: [access b] oidc-client-id: required with oidc-issuer",
            "14: [access b] oidc-allow: required with oidc-issuer (who may pass: addresses,"
            " *@domain)",
            "15: [access b] oidc-issuer: 'http://accounts.example.com': an http:// issuer is"
            " accepted on a loopback address only",
            f"16: [access b] oidc-client-secret-file: {self.dir.absolute()}/oidc.secret"
            " is readable by group or others; chmod 600 it",
            "19: [serve 443] access: no [access nope] section (known: a, b)",
            "20: [serve 443] access /x/: /x/ is not a mount of this section",
        )

    def test_http_only_keys_refused_on_other_ports(self) -> None:
        self.write("staff.htpasswd", BCRYPT, 0o600)
        self.write("ca.pem", make_ca().cert_pem(), 0o644)
        self.assertErrors(
            NODE
            + """[access web]
basic-auth-file = staff.htpasswd
max-request-body = 1M
[access devices]
client-ca-file = ca.pem
allow = 10.0.0.0/8
[serve 8443]
tcp-forward = 9443
access = web
[serve 5432]
tls-terminated-tcp = 5432
access = devices
[serve 9000]
tcp-forward = 9000
access = devices
[serve 443]
tcp-forward = 443
access /x/ = devices
""",
            "12: [serve 8443] access: [access web] has basic-auth-file, max-request-body, which"
            " only HTTPS mounts apply; a tcp-forward port takes allow/allow-file/deny,"
            " rate-limit, client-ca-file (tls-terminated-tcp)",
            "18: [serve 9000] access: [access devices] has client-ca-file, which only HTTPS"
            " mounts apply; a tcp-forward port takes allow/allow-file/deny, rate-limit",
            "21: [serve 443] access /x/: is only used with /PATH = TARGET mounts",
        )

    def test_client_ca_file(self) -> None:
        self.write("leaf.pem", issue("device").cert_pem(), 0o644)
        self.write("junk.pem", "not a certificate\n", 0o644)
        self.assertErrors(
            NODE + "[access a]\nclient-ca-file = leaf.pem\n[access b]\nclient-ca-file = junk.pem\n",
            f"5: [access a] client-ca-file: {self.dir.absolute()}/leaf.pem: CN=device is not a"
            " CA certificate",
            f"7: [access b] client-ca-file: {self.dir.absolute()}/junk.pem: not PEM certificates",
        )

    def test_apache_htpasswd_schemes(self) -> None:
        if shutil.which("htpasswd") is None:
            self.skipTest("htpasswd (apache2-utils) not installed")
        good = str(self.dir / "good")
        subprocess.run(["htpasswd", "-bcB", good, "alice", "pw1"], check=True, capture_output=True)
        subprocess.run(["htpasswd", "-b5", good, "bob", "pw2"], check=True, capture_output=True)
        subprocess.run(["htpasswd", "-b2", good, "carol", "pw3"], check=True, capture_output=True)
        (self.dir / "good").chmod(0o640)
        users = read_htpasswd(self.dir / "good")
        self.assertEqual(list(users), ["alice", "bob", "carol"])
        refused = {"-m": "Apache MD5 (apr1)", "-s": "unsalted SHA-1", "-p": "a plain-text"}
        refused["-d"] = "crypt (DES)"
        for flag, scheme in refused.items():
            bad = self.dir / f"bad{flag}"
            subprocess.run(
                ["htpasswd", "-bc" + flag[1], str(bad), "dave", "pw"],
                check=True,
                capture_output=True,
            )
            bad.chmod(0o600)
            error = self.assertRaises(ValueError, read_htpasswd, bad)
            self.assertIn(f"{bad}:1: user 'dave': {scheme}", str(error))
            self.assertIn("htpasswd -B", str(error))
