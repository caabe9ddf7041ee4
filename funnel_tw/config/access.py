"""``[access NAME]`` sections and the files they name, checked when the config loads.

The file readers here (htpasswd, bearer tokens, CIDR lists) are also what serve/access uses at
run time, so the check at load and the use later can never disagree about a line. Each raises
ValueError with "FILE:LINE: why", which the section reports after its own "FILE:LINE: [access
NAME] KEY:" prefix.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from . import values
from .ini import Section
from .model import AccessPolicy, IPNetwork

__all__ = [
    "ACCESS",
    "CONNECTION_KEYS",
    "MAX_LIST_FILE",
    "access_policy",
    "check_port_access",
    "read_bearer_tokens",
    "read_ca_file",
    "read_htpasswd",
    "read_networks",
    "read_secret_text",
]

ACCESS = "access"
MAX_LIST_FILE = 4 << 20
"""A user, token or CIDR file larger than this is refused: bounded memory at load and reload."""

_KEYS = (
    "allow",
    "allow-file",
    "deny",
    "basic-auth-file",
    "bearer-tokens-file",
    "oidc-issuer",
    "oidc-client-id",
    "oidc-client-secret-file",
    "oidc-allow",
    "oidc-session-lifetime",
    "forward-auth",
    "client-ca-file",
    "rate-limit",
    "rate-burst",
    "max-request-body",
)
CONNECTION_KEYS = ("allow", "allow-file", "deny", "rate-limit", "rate-burst")
"""What a non-HTTP port ([serve PORT] tcp-forward, tls-terminated-tcp, handler) can apply."""

_RATE = re.compile(r"([0-9]{1,9})\s*/\s*(s|m|h)\Z")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"([0-9]{1,12})\s*([KMG]?)\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_TOKEN_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._@-]*):sha256:([0-9a-fA-F]{64})\Z")
_BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
_SHA_CRYPT = re.compile(r"\$[56]\$(rounds=[0-9]{1,9}\$)?[^$:]{0,16}\$[./A-Za-z0-9]{43,86}")
ACCEPTED_HASHES = ("$2y$", "$2b$", "$2a$", "$5$", "$6$")
_REFUSED_HASHES = (
    ("$apr1$", "Apache MD5 (apr1)"),
    ("$1$", "MD5-crypt"),
    ("{SHA}", "unsalted SHA-1"),
    ("$2x$", "bcrypt with the $2x$ bug"),
)


def rate(value: str) -> float:
    """``N/s``, ``N/m`` or ``N/h``: events per second."""
    match = _RATE.match(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a rate (use N/s, N/m or N/h with N > 0)")
    return int(match.group(1)) / _PER[match.group(2)]


def size(value: str) -> int:
    """A byte count, optionally with K, M or G (binary units): ``10M``."""
    match = _SIZE.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size (use a number of bytes, or with K, M or G)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _read_text(file: Path, world_readable_ok: bool, secret: bool = False) -> list[str]:
    """The lines of a small file; a secret (group/others) or credential (others) file that is
    readable more widely is refused, as private keys are."""
    try:
        with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{file} is not a regular file")
            if secret and st.st_mode & 0o077:
                raise ValueError(f"{file} is readable by group or others; chmod 600 it")
            if not world_readable_ok and st.st_mode & 0o007:
                raise ValueError(f"{file} is readable by others; chmod 640 (or 600) it")
            data = f.read(MAX_LIST_FILE + 1)
    except FileNotFoundError:
        raise ValueError(f"{file} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {file}: {e.strerror}") from None
    if len(data) > MAX_LIST_FILE:
        raise ValueError(f"{file} is larger than {MAX_LIST_FILE} bytes")
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{file} is not UTF-8 text") from None


def _content(lines: Sequence[str]) -> list[tuple[int, str]]:
    """(line number, text) of the lines that are not blank or ``#`` comments."""
    out = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            out.append((number, text))
    return out


def read_networks(file: Path) -> tuple[IPNetwork, ...]:
    """An allow-file: one CIDR (or address) per line, ``#`` comments after it or alone."""
    result: list[IPNetwork] = []
    for number, line in enumerate(_read_text(file, world_readable_ok=True), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            (network,) = values.networks(item)
        except ValueError as e:
            raise ValueError(f"{file}:{number}: {e}") from None
        result.append(network)
    return tuple(result)


def read_htpasswd(file: Path) -> dict[str, str]:
    """An Apache htpasswd file: ``USER:HASH`` lines, only in the schemes that resist offline
    guessing (bcrypt, SHA-256/512-crypt). Plain, crypt, MD5 and SHA-1 lines are refused."""
    users: dict[str, str] = {}
    for number, line in _content(_read_text(file, world_readable_ok=False)):
        user, colon, hashed = line.partition(":")
        where = f"{file}:{number}"
        if not colon or not user or not hashed:
            raise ValueError(f"{where}: not a USER:HASH line")
        if user in users:
            raise ValueError(f"{where}: user {user!r} is listed twice")
        if not hashed.startswith(ACCEPTED_HASHES):
            scheme = next((n for p, n in _REFUSED_HASHES if hashed.startswith(p)), None)
            if scheme is None:
                scheme = "crypt (DES)" if len(hashed) == 13 else "a plain-text password"
            raise ValueError(
                f"{where}: user {user!r}: {scheme} is refused (weak); re-create the line"
                f" with `htpasswd -B` (bcrypt) or `htpasswd -5` (SHA-512-crypt)"
            )
        if hashed.startswith("$2") and not _BCRYPT.fullmatch(hashed):
            raise ValueError(f"{where}: user {user!r}: a malformed bcrypt hash")
        if hashed.startswith(("$5$", "$6$")) and not _SHA_CRYPT.fullmatch(hashed):
            raise ValueError(f"{where}: user {user!r}: a malformed SHA-crypt hash")
        users[user] = hashed
    return users


def read_bearer_tokens(file: Path) -> dict[bytes, str]:
    """``NAME:sha256:HEX`` lines: the SHA-256 of each token, never the token itself."""
    tokens: dict[bytes, str] = {}
    for number, line in _content(_read_text(file, world_readable_ok=False)):
        match = _TOKEN_LINE.match(line)
        if match is None:
            raise ValueError(f"{file}:{number}: not a NAME:sha256:HEX line (64 hex digits)")
        digest = bytes.fromhex(match.group(2))
        if digest in tokens:
            raise ValueError(f"{file}:{number}: the same token as {tokens[digest]!r}")
        tokens[digest] = match.group(1)
    return tokens


def read_secret_text(file: Path) -> str:
    """A one-line secret (the OIDC client secret) in a file only its owner can read."""
    lines = [line.strip() for line in _read_text(file, False, secret=True) if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{file}: expected the secret alone on one line")
    return lines[0]


def read_ca_file(file: Path) -> list[x509.Certificate]:
    """client-ca-file: one or more PEM CA certificates."""
    data = "\n".join(_read_text(file, world_readable_ok=True)).encode()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{file}: not PEM certificates") from None
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError(f"{file}: {cert.subject.rfc4514_string()} is not a CA certificate")
    return certs


def _issuer(value: str) -> str:
    values.url(value, ("https", "http"))
    parts = urllib.parse.urlsplit(value)
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise ValueError(f"{value!r}: an http:// issuer is accepted on a loopback address only")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an issuer has no query or fragment")
    return value.rstrip("/")


def _oidc_allow(value: str) -> tuple[str, ...]:
    result = []
    for item in values.items(value):
        item = item.lower()
        if item.startswith("*@"):
            values.hostname(item[2:])
        else:
            values.email(item)
        result.append(item)
    if not result:
        raise ValueError("needs at least one address or *@domain")
    return tuple(result)


def access_policy(section: Section) -> AccessPolicy | None:
    """One ``[access NAME]`` section, its files read and checked now."""
    section.reject_unknown(_KEYS)

    def file_key(key: str, reader: object = None) -> Path | None:
        path = section.opt(key, section.path, None)
        if path is None:
            return None
        try:
            if callable(reader):
                reader(path)
            else:
                values.existing_file(path)
        except ValueError as e:
            section.error(key, str(e))
            return None
        return path

    errors = len(section.file.errors)
    allow = section.opt("allow", values.networks, ())
    deny = section.opt("deny", values.networks, ())
    allow_file = file_key("allow-file", read_networks)
    basic = file_key("basic-auth-file", read_htpasswd)
    bearer = file_key("bearer-tokens-file", read_bearer_tokens)
    issuer = section.opt("oidc-issuer", _issuer, None)
    client_id = section.opt("oidc-client-id", lambda v: v, None)
    secret_file = file_key("oidc-client-secret-file", read_secret_text)
    oidc_allow = section.opt("oidc-allow", _oidc_allow, ())
    lifetime = section.opt("oidc-session-lifetime", values.seconds, 86400.0)
    oidc_keys = [k for k in section.values if k.startswith("oidc-")]
    if "oidc-issuer" not in section.values:
        for key in oidc_keys:
            section.error(key, "is only used with oidc-issuer")
    else:
        for key in ("oidc-client-id", "oidc-allow"):
            if key not in section.values:
                why = " (who may pass: addresses, *@domain)" if key == "oidc-allow" else ""
                section.error(key, f"required with oidc-issuer{why}")
    forward = section.opt("forward-auth", lambda v: values.url(v, ("http", "https")), None)
    client_ca = file_key("client-ca-file", read_ca_file)
    limit = section.opt("rate-limit", rate, None)
    burst = section.opt("rate-burst", lambda v: values.integer(v, 1, 1_000_000, "count"), None)
    if burst is not None and "rate-limit" not in section.values:
        section.error("rate-burst", "is only used with rate-limit")
    body = section.opt("max-request-body", size, None)
    if len(section.file.errors) > errors:
        return None
    if limit is not None and burst is None:
        burst = max(1, int(section.values["rate-limit"].partition("/")[0]))
    return AccessPolicy(
        name=section.name,
        allow=allow,
        allow_file=allow_file,
        deny=deny,
        basic_auth_file=basic,
        bearer_tokens_file=bearer,
        oidc_issuer=issuer,
        oidc_client_id=client_id,
        oidc_client_secret_file=secret_file,
        oidc_allow=oidc_allow,
        oidc_session_lifetime=lifetime,
        forward_auth=forward,
        client_ca_file=client_ca,
        rate_limit=limit,
        rate_burst=burst,
        max_request_body=body,
    )


def check_port_access(
    section: Section, kind: str, policies: dict[str, AccessPolicy | None]
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """``access = NAME`` and ``access /PATH = NAME`` of a [serve] section: (the port's policy,
    the mounts' own). ``kind`` is "mounts", "tcp-forward", "tls-terminated-tcp" or "handler"."""
    port_policy: str | None = None
    mounts: list[tuple[str, str]] = []
    mount_paths = [k for k in section.values if k.startswith("/")]
    for key in [k for k in section.values if k.partition(" ")[0] == ACCESS]:
        path = key.partition(" ")[2].strip()
        name = section.values[key]
        if name not in policies:
            known = ", ".join(sorted(policies)) or "none"
            section.error(key, f"no [access {name}] section (known: {known})")
            continue
        if path and kind != "mounts":
            section.error(key, "is only used with /PATH = TARGET mounts")
            continue
        if path and path not in mount_paths:
            section.error(key, f"{path} is not a mount of this section")
            continue
        policy = policies[name]
        if policy is not None and kind != "mounts":
            allowed = ["allow/allow-file/deny", "rate-limit"]
            refused = list(policy.http_only)
            if policy.client_ca_file is not None and kind != "tls-terminated-tcp":
                refused.append("client-ca-file")
            else:
                allowed.append("client-ca-file (tls-terminated-tcp)")
            if refused:
                section.error(
                    key,
                    f"[access {name}] has {', '.join(refused)}, which only HTTPS mounts apply;"
                    f" a {kind} port takes {', '.join(allowed)}",
                )
                continue
        if path:
            mounts.append((path, name))
        else:
            port_policy = name
    return port_policy, tuple(mounts)
