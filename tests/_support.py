"""What many tests need, in one place: throwaway certificates, free ports, real client programs
(curl, openssl) run without blocking the reactor, and waits that always have a deadline.

The certificates are built with ``cryptography`` directly, not with funnel_tw.tls's own
builder: a fixture must not come from the code it is used to test. The global reactor is
imported only where it is used, so that code without a reactor (the end-to-end harness,
bench/) can import the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from twisted.internet import defer, error, protocol, ssl, task
from twisted.python.failure import Failure

# --------------------------------------------------------------------------- certificates

KeyType = Literal["ec", "rsa", "ed25519"]
#: an extension and whether it is critical
Extension = tuple[x509.ExtensionType, bool]
#: a point in time, or an offset from now
When = datetime.datetime | datetime.timedelta

PEM = serialization.Encoding.PEM


def new_key(key_type: KeyType = "ec") -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key: ECDSA P-256, RSA 2048 or Ed25519."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _at(when: When, now: datetime.datetime) -> datetime.datetime:
    return now + when if isinstance(when, datetime.timedelta) else when


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, and the ``Issued`` that signed it (None: self-signed)."""

    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate
    issuer: Issued | None = None

    @property
    def chain(self) -> list[x509.Certificate]:
        """This certificate, then each issuer up to the root."""
        return [self.cert, *(self.issuer.chain if self.issuer else [])]

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(PEM)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def private_certificate(self) -> ssl.PrivateCertificate:
        """For Twisted's TLS servers (``.options()``)."""
        loaded: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
            self.cert_pem() + self.key_pem()
        )
        return loaded

    def write(self, cert_file: Path, key_file: Path, *, chain: bool = True) -> None:
        """The certificate (with its issuers when ``chain``) and the key (0600) as PEM files."""
        cert_file.write_bytes(self.chain_pem() if chain else self.cert_pem())
        key_file.write_bytes(self.key_pem())
        key_file.chmod(0o600)


def sign(
    subject: str,
    public_key: CertificatePublicKeyTypes,
    signer: Issued | CertificateIssuerPrivateKeyTypes,
    *,
    san: Sequence[str] = (),
    not_before: When = datetime.timedelta(hours=-1),
    not_after: When = datetime.timedelta(days=1),
    ca: bool | None = None,
    path_length: int | None = None,
    serial: int | None = None,
    extensions: Sequence[Extension] = (),
) -> x509.Certificate:
    """A certificate for ``public_key``, signed by ``signer`` (an issuing certificate, or a bare
    key: self-signed).

    ``san``: DNS names and IP addresses (none: no SubjectAlternativeName at all). ``ca``: True
    makes a CA (critical BasicConstraints, KeyUsage certSign+cRLSign, a SubjectKeyIdentifier),
    False adds a critical ``BasicConstraints(ca=False)``, None neither. A certificate signed by
    an issuer carries its AuthorityKeyIdentifier. Times are absolute or offsets from now, so
    an expired or not-yet-valid certificate is a matter of signs.
    """
    now = utcnow()
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    if isinstance(signer, Issued):
        signing_key, issuer_name = signer.key, signer.cert.subject
    else:
        signing_key, issuer_name = signer, subject_name
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(_at(not_before, now))
        .not_valid_after(_at(not_after, now))
    )
    if san:
        names = [_general_name(n) for n in san]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    if isinstance(signer, Issued):
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signing_key, algorithm)


def issue(
    name: str,
    *,
    issuer: Issued | None = None,
    san: Sequence[str] | None = None,
    key_type: KeyType = "ec",
    not_before: When = datetime.timedelta(hours=-1),
    not_after: When = datetime.timedelta(days=1),
    ca: bool | None = None,
    path_length: int | None = None,
    serial: int | None = None,
    extensions: Sequence[Extension] = (),
) -> Issued:
    """A new key and a certificate for ``name`` (its common name), signed by ``issuer`` or
    self-signed. ``san`` defaults to ``[name]`` for a leaf and to nothing for a CA; pass ``()``
    for a certificate without SubjectAlternativeName. The rest is as for :func:`sign`."""
    key = new_key(key_type)
    if san is None:
        san = () if ca else (name,)
    cert = sign(
        name,
        key.public_key(),
        issuer or key,
        san=san,
        not_before=not_before,
        not_after=not_after,
        ca=ca,
        path_length=path_length,
        serial=serial,
        extensions=extensions,
    )
    return Issued(key, cert, issuer)


def make_ca(
    name: str = "funnel-tw test CA",
    *,
    key_type: KeyType = "ec",
    not_before: When = datetime.timedelta(hours=-1),
    not_after: When = datetime.timedelta(days=1),
    path_length: int | None = None,
) -> Issued:
    """A self-signed CA to sign leaves with: ``issue(NAME, issuer=ca)``."""
    return issue(
        name,
        key_type=key_type,
        not_before=not_before,
        not_after=not_after,
        ca=True,
        path_length=path_length,
    )


# --------------------------------------------------------------------------- ports


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (``socket.SOCK_STREAM``: TCP, ``SOCK_DGRAM``: UDP)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_and_udp_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (a DNS server listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM, host)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no port free for both TCP and UDP on {host}")


def has_ipv6_loopback() -> bool:
    try:
        free_port(host="::1")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- client programs


def tls_exchange(
    port: int,
    cafile: str,
    server_name: str,
    raw: bytes,
    *,
    quiet: float = 1.5,
    timeout: float = 10.0,
) -> bytes:
    """A raw client (blocking; run it in a thread from reactor code): send ``raw`` over TLS to
    127.0.0.1:``port`` with SNI ``server_name``, and return everything read until the server
    closes or stays quiet for ``quiet`` seconds. No HTTP library: the bytes go as they are."""
    import ssl as std_ssl

    context = std_ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain,
        context.wrap_socket(plain, server_hostname=server_name) as tls,
    ):
        tls.sendall(raw)
        tls.settimeout(quiet)
        received = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (TimeoutError, std_ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


class ProcessResult(NamedTuple):
    """What a finished program did; unpacks as ``code, out, err``."""

    returncode: int
    stdout: bytes
    stderr: bytes


def client_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``*_proxy``: loopback clients must not use a proxy."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(extra)
    return env


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        assert isinstance(value, error.ProcessDone | error.ProcessTerminated)
        code = value.exitCode
        if code is None:  # killed by a signal: negative, as subprocess reports it
            code = -(value.signal or 0)
        self.ended.callback(code)


async def run_process(
    *argv: str,
    timeout: float = 60.0,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> ProcessResult:
    """Run a program to its end while the reactor keeps serving. Past ``timeout`` seconds it is
    killed and TimeoutError raised. ``env`` defaults to :func:`client_env`."""
    from twisted.internet import reactor

    collect = _Collect(stdin)
    transport = reactor.spawnProcess(
        collect,
        argv[0],
        list(argv),
        env=dict(client_env() if env is None else env),
        path=None if cwd is None else str(cwd),
    )
    timed_out: list[bool] = []

    def kill() -> None:
        timed_out.append(True)
        with contextlib.suppress(error.ProcessExitedAlready):
            transport.signalProcess("KILL")

    timer = reactor.callLater(timeout, kill)
    try:
        code = await collect.ended
    finally:
        if timer.active():
            timer.cancel()
    if timed_out:
        raise TimeoutError(f"{argv[0]} still running after {timeout} s: killed")
    return ProcessResult(code, b"".join(collect.out), b"".join(collect.err))


def curl_argv(
    name: str,
    port: int,
    path: str = "/",
    *extra: str,
    ca_file: str | Path | None = None,
    connect: str | None = "127.0.0.1",
    max_time: int = 20,
    scheme: str = "https",
) -> list[str]:
    """``curl -sS`` for ``scheme://name:port/path``: trusting only ``ca_file`` when given,
    connecting to ``connect`` whatever ``name`` resolves to (None: resolve it), giving up after
    ``max_time`` seconds. ``extra`` comes after these, so it can override them."""
    argv = ["curl", "-sS", "--max-time", str(max_time)]
    if ca_file is not None:
        argv += ["--cacert", str(ca_file)]
    if connect is not None:
        address = f"[{connect}]" if ":" in connect else connect
        argv += ["--resolve", f"{name}:{port}:{address}"]
    return [*argv, *extra, f"{scheme}://{name}:{port}{path}"]


async def curl(
    name: str,
    port: int,
    path: str = "/",
    *extra: str,
    ca_file: str | Path | None = None,
    connect: str | None = "127.0.0.1",
    max_time: int = 20,
    scheme: str = "https",
    timeout: float | None = None,
) -> ProcessResult:
    """Run :func:`curl_argv` on the reactor; killed after ``timeout`` (``max_time`` + 20 s)."""
    argv = curl_argv(
        name,
        port,
        path,
        *extra,
        ca_file=ca_file,
        connect=connect,
        max_time=max_time,
        scheme=scheme,
    )
    return await run_process(*argv, timeout=max_time + 20 if timeout is None else timeout)


# --------------------------------------------------------------------------- bounded waits


def _timed_out(what: str, timeout: float, detail: Callable[[], str] | None) -> AssertionError:
    message = f"timed out after {timeout} s waiting for {what}"
    return AssertionError(f"{message}; {detail()}" if detail else message)


def sleep(seconds: float) -> defer.Deferred[None]:
    """Let the reactor run for ``seconds``: for tests that measure real time, not to wait for
    something to happen (that is :func:`wait_until`)."""
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


async def eventually(
    predicate: Callable[[], object], timeout: float, *, interval: float = 0.01
) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds, polled on the reactor
    every ``interval``; returns as soon as it does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await sleep(interval)
    return True


async def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> float:
    """Poll ``predicate`` on the reactor until it is true; the seconds it took. At the deadline,
    AssertionError naming ``what`` (and ``detail()``, e.g. a log tail)."""
    start = time.monotonic()
    if not await eventually(predicate, timeout, interval=interval):
        raise _timed_out(what, timeout, detail)
    return time.monotonic() - start


def wait_until_blocking(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> float:
    """:func:`wait_until` for code that runs without a reactor (or in a thread): blocks."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, detail)
        time.sleep(interval)
    return time.monotonic() - start


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists any more (reaped, not merely exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


__all__ = [
    "Issued",
    "ProcessResult",
    "client_env",
    "curl",
    "curl_argv",
    "eventually",
    "free_port",
    "free_tcp_and_udp_port",
    "has_ipv6_loopback",
    "issue",
    "make_ca",
    "new_key",
    "process_gone",
    "run_process",
    "sign",
    "sleep",
    "utcnow",
    "wait_until",
    "wait_until_blocking",
]
