"""An asynchronous ACME v2 (RFC 8555) client: the ``acme`` library's messages and JWS over treq.

txacme is not used (REFERENCE.md: it speaks only ACME v1 and no longer imports). This client
does what a node needs and no more: the directory, nonces (one retry on ``badNonce``), an
account (created once, then found again with the same key), orders for several names,
authorizations and their challenges, polling with ``Retry-After``, finalisation with a CSR,
the certificate chain, and renewal information (ARI) when the server offers it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any

from acme import jws, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import errors as jose_errors
from josepy import jwa, jwk
from josepy.b64 import b64decode
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()

JOSE_CONTENT_TYPE = "application/jose+json"
MAX_POLLS = 60


class ACMEError(Exception):
    """The ACME server said no, or said something we cannot use."""

    def __init__(
        self, message: str, *, kind: str = "", status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind  # e.g. "urn:ietf:params:acme:error:rateLimited"
        self.status = status
        self.retry_after = retry_after

    @property
    def rate_limited(self) -> bool:
        return self.status == 429 or self.kind.endswith(":rateLimited")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_authorization(token: str, account_key: jwk.JWK) -> str:
    thumbprint = account_key.thumbprint(hash_function=hashes.SHA256)
    return f"{token}.{b64(thumbprint)}"


def dns01_value(key_authz: str) -> str:
    return b64(hashlib.sha256(key_authz.encode()).digest())


def ari_certificate_id(cert: x509.Certificate) -> str | None:
    """draft-ietf-acme-ari: base64url(AKI keyIdentifier) "." base64url(serial DER bytes)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    if aki.value.key_identifier is None:
        return None
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{b64(aki.value.key_identifier)}.{b64(serial_bytes)}"


def _retry_after(headers: Any, default: float | None = None) -> float | None:
    value = headers.getRawHeaders(b"retry-after", [None])[0]
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value.decode())
        return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())
    except (TypeError, ValueError):
        return default


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> str | None:
        value = self.headers.getRawHeaders(name, [None])[0]
        return value.decode() if value is not None else None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ACMEError(f"invalid JSON from the ACME server: {e}") from None


class ACMEClient:
    def __init__(
        self, directory_url: str, account_key: ec.EllipticCurvePrivateKey, http: Any, reactor: Any
    ) -> None:
        """``http`` is a treq HTTPClient (its TLS trust decides which servers are accepted)."""
        self.directory_url = directory_url
        self.key = jwk.JWKEC(key=account_key)
        self.http = http
        self.reactor = reactor
        self.directory: messages.Directory | None = None
        self.account_url: str | None = None
        self._nonces: list[str] = []

    # --- transport -------------------------------------------------------------------------

    async def _request(self, method: str, url: str, data: bytes | None = None) -> Response:
        headers = {b"user-agent": [b"funnel-tw"]}
        if data is not None:
            headers[b"content-type"] = [JOSE_CONTENT_TYPE.encode()]
        try:
            response = await self.http.request(method, url, data=data, headers=headers, timeout=30)
            body = await response.content()
        except Exception as e:
            raise ACMEError(f"{method} {url}: {e.__class__.__name__}: {e}") from None
        nonce = response.headers.getRawHeaders(b"replay-nonce", [None])[0]
        if nonce:
            self._nonces.append(nonce.decode())
        return Response(response.code, response.headers, body)

    async def get_directory(self) -> messages.Directory:
        if self.directory is None:
            response = await self._request("GET", self.directory_url)
            if response.code != 200:
                raise ACMEError(
                    f"directory {self.directory_url}: HTTP {response.code}", status=response.code
                )
            try:
                data = response.json()
                if not isinstance(data, dict) or not all(
                    k in data for k in ("newNonce", "newAccount", "newOrder")
                ):
                    raise TypeError("not an ACME directory object")
                self.directory = messages.Directory.from_json(data)
            except (jose_errors.DeserializationError, TypeError) as e:
                raise ACMEError(f"invalid ACME directory: {e}") from None
        return self.directory

    async def _nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        directory = await self.get_directory()
        response = await self._request("HEAD", directory["newNonce"])
        if not self._nonces:
            raise ACMEError(f"no Replay-Nonce from newNonce (HTTP {response.code})")
        return self._nonces.pop()

    async def post(self, url: str, payload: Any | None, *, use_jwk: bool = False) -> Response:
        """A JWS-signed POST (``payload`` None: POST-as-GET); one retry on badNonce."""
        for attempt in (1, 2):
            nonce = await self._nonce()
            body = (
                b""
                if payload is None
                else (
                    payload.json_dumps()  # josepy objects serialise their nested fields too
                    if hasattr(payload, "json_dumps")
                    else json.dumps(payload)
                ).encode()
            )
            kid = None if use_jwk else self.account_url
            signed = jws.JWS.sign(
                body, key=self.key, alg=jwa.ES256, nonce=b64decode(nonce), url=url, kid=kid
            )
            response = await self._request("POST", url, signed.json_dumps().encode())
            if response.code < 400:
                return response
            error = self._error(response)
            if error.kind.endswith(":badNonce") and attempt == 1:
                log.info("ACME server rejected our nonce; retrying once")
                continue
            raise error
        raise AssertionError("unreachable")

    def _error(self, response: Response) -> ACMEError:
        kind, detail = "", response.body[:300].decode("utf-8", "replace")
        try:
            problem = json.loads(response.body)
            kind = str(problem.get("type", ""))
            detail = str(problem.get("detail", detail))
        except (ValueError, AttributeError):
            pass
        return ACMEError(
            f"HTTP {response.code} {kind}: {detail}".strip(),
            kind=kind,
            status=response.code,
            retry_after=_retry_after(response.headers),
        )

    # --- account -----------------------------------------------------------------------------

    async def register(self, email: str | None) -> str:
        """Create the account, or find the existing one for this key; returns its URL."""
        directory = await self.get_directory()
        contact = (f"mailto:{email}",) if email else ()
        registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        response = await self.post(directory["newAccount"], registration, use_jwk=True)
        location = response.header(b"location")
        if not location:
            raise ACMEError("newAccount answered without a Location")
        self.account_url = location
        return location

    # --- orders ------------------------------------------------------------------------------

    async def new_order(self, names: list[str]) -> tuple[str, messages.Order]:
        directory = await self.get_directory()
        order = messages.NewOrder(
            identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names]
        )
        response = await self.post(directory["newOrder"], order)
        location = response.header(b"location")
        if not location:
            raise ACMEError("newOrder answered without a Location")
        return location, self._parse(messages.Order, response)

    async def authorization(self, url: str) -> messages.Authorization:
        authz: messages.Authorization = self._parse(
            messages.Authorization, await self.post(url, None)
        )
        return authz

    async def answer(self, challenge_url: str) -> None:
        await self.post(challenge_url, {})

    async def poll(self, url: str, kind: type[Any], done: set[str], interval: float = 1.0) -> Any:
        """POST-as-GET ``url`` until its status is in ``done`` (honouring Retry-After)."""
        for _ in range(MAX_POLLS):
            response = await self.post(url, None)
            resource = self._parse(kind, response)
            if status_of(resource) in done:
                return resource
            wait = _retry_after(response.headers, interval) or interval
            await task.deferLater(self.reactor, min(wait, 30.0), lambda: None)
        raise ACMEError(f"{url} did not finish after {MAX_POLLS} polls")

    async def finalize(self, order: messages.Order, csr_der: bytes) -> None:
        await self.post(order.finalize, {"csr": b64(csr_der)})

    async def certificate(self, url: str) -> bytes:
        response = await self.post(url, None)
        if b"-----BEGIN CERTIFICATE-----" not in response.body:
            raise ACMEError("the certificate download is not a PEM chain")
        return response.body

    async def renewal_window(
        self, cert: x509.Certificate
    ) -> tuple[datetime.datetime, datetime.datetime] | None:
        """The server's suggested renewal window (ARI), or None if it offers none."""
        directory = await self.get_directory()
        base = directory.to_partial_json().get("renewalInfo")
        cert_id = ari_certificate_id(cert)
        if not base or not cert_id:
            return None
        response = await self._request("GET", f"{base.rstrip('/')}/{cert_id}")
        if response.code != 200:
            return None
        try:
            window = response.json()["suggestedWindow"]
            start = datetime.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
            end = datetime.datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
        except (ACMEError, KeyError, TypeError, ValueError):
            return None
        return start, end

    @staticmethod
    def _parse(kind: type[Any], response: Response) -> Any:
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return kind.from_json(data)
        except (jose_errors.DeserializationError, TypeError, KeyError) as e:
            raise ACMEError(f"invalid {kind.__name__} from the ACME server: {e}") from None


def status_of(resource: Any) -> str:
    """A resource's status as its plain name ("valid"); str() of it is "Status(valid)"."""
    return str(getattr(resource.status, "name", ""))


def make_csr(key: ec.EllipticCurvePrivateKey, names: list[str]) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


__all__ = ["ACMEClient", "ACMEError", "defer", "dns01_value", "key_authorization", "make_csr"]
