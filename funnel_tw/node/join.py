"""``funnel-tw join --config node.ini TOKEN``: enroll this node with a relay.

Blocking and standard library only (it runs before any daemon): make the node's key if its
file does not exist yet, reach the relay's enroll listener over TLS, check that its certificate
is the one the token pins before sending anything, send the secret and the public key, and
record the answer in ``<state-dir>/enrollment.json`` (0600), which loading node.ini reads.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
from pathlib import Path

import attrs

from ..config import values
from ..config.enrolled import (
    NODE_ENROLLMENT,
    Enrollment,
    enrollment_from,
    enrollment_record,
    write_private_json,
)
from ..config.ini import IniFile
from ..daemon.enroll import (
    ENROLL_PATH,
    MAX_RESPONSE_BODY,
    REFUSALS,
    Token,
    TokenError,
    parse_token,
    pin_matches,
)
from ..keys import decode_key, encode_key, generate_private_key, public_key

MAX_HEAD = 16 << 10


class JoinError(Exception):
    """Why joining failed, in one line for a person."""


@attrs.frozen
class JoinSettings:
    """What join needs of node.ini (the rest may not be complete before a join)."""

    key_file: Path | None
    key: bytes | None
    state_dir: Path
    peerapi_port: int


@attrs.frozen
class Joined:
    enrollment: Enrollment
    key_created: Path | None  # the key file join made, if it made one
    path: Path  # enrollment.json


def join_settings(path: str | os.PathLike[str]) -> JoinSettings:
    """[node] private-key(-file), state-dir, peerapi-port; ConfigError with FILE:LINE."""
    file = IniFile(path)
    node = next((s for s in file.sections if s.header.strip() == "node"), None)
    if node is None:
        file.fail(0, "node", None, "missing section")
    if "private-key" in node.values and "private-key-file" in node.values:
        node.error("private-key-file", "use private-key or private-key-file, not both")
    key_file = node.opt("private-key-file", node.path, None)
    key = node.opt("private-key", decode_key, None)
    if key_file is None and key is None and "private-key" not in node.values:
        node.error(
            "private-key-file", "required: the file join creates (private-key-file = node.key)"
        )
    state_dir = node.opt("state-dir", node.path, node.path("state"))
    peerapi_port = node.opt("peerapi-port", values.port, 41642)
    file.check()
    return JoinSettings(key_file, key, state_dir, peerapi_port)


def node_key(settings: JoinSettings) -> tuple[bytes, Path | None]:
    """The node's private key, and the file made for it when there was none."""
    if settings.key is not None:
        return settings.key, None
    assert settings.key_file is not None
    path = settings.key_file
    if path.exists():
        try:
            return values.read_key_file(path), None
        except ValueError as e:
            raise JoinError(f"{path}: {e}") from None
    key = generate_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise JoinError(f"cannot create the key file {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(key) + "\n")
    return key, path


def _where(token: Token) -> str:
    return f"[{token.host}]:{token.port}" if ":" in token.host else f"{token.host}:{token.port}"


def enroll_request(
    token: Token, key: bytes, peerapi_port: int, timeout: float
) -> dict[str, object]:
    """POST the enrollment to the relay the token names; its JSON answer, or JoinError."""
    where = _where(token)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin below is the check, not a CA
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    body = json.dumps(
        {
            "version": 1,
            "secret": base64.urlsafe_b64encode(token.secret).decode(),
            "public_key": encode_key(public_key(key)),
            "peerapi_port": peerapi_port,
        }
    ).encode()
    try:
        with (
            socket.create_connection((token.host, token.port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
            if certificate is None or not pin_matches(token, certificate):
                raise JoinError(
                    f"{where} is not the relay that made this token: its certificate does "
                    "not match the token's pin (a wrong address, or someone in between); "
                    "nothing was sent"
                )
            tls.sendall(
                f"POST {ENROLL_PATH} HTTP/1.1\r\nHost: {where}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            answer = b""
            while len(answer) <= MAX_HEAD + MAX_RESPONSE_BODY:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except JoinError:
        raise
    except TimeoutError:
        raise JoinError(
            f"the relay's enroll listener at {where} did not answer within {timeout:g}s"
        ) from None
    except ConnectionRefusedError:
        raise JoinError(
            f"cannot reach the relay's enroll listener at {where}: connection refused "
            "(is the relay running with enroll-port, and the port open?)"
        ) from None
    except ssl.SSLError as e:
        raise JoinError(f"TLS with {where} failed: {e.reason or e}") from None
    except OSError as e:
        raise JoinError(
            f"cannot reach the relay's enroll listener at {where}: {e.strerror or e}"
        ) from None
    head, _, content = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if status == 200 and isinstance(data, dict):
        return data
    if isinstance(data, dict) and data.get("error") in REFUSALS:
        raise JoinError(f"the relay refused: {REFUSALS[str(data['error'])]}")
    if isinstance(data, dict) and isinstance(data.get("message"), str):  # pinned: the relay's
        said = "".join(c if c.isprintable() else "?" for c in data["message"][:200])
        raise JoinError(f"the relay refused (status {status}): {said}")
    raise JoinError(f"{where} answered something that is not an enrollment (status {status})")


def join(config: str | os.PathLike[str], token_text: str, timeout: float = 15.0) -> Joined:
    """Enroll with the relay of ``token_text``; ConfigError for node.ini, JoinError else."""
    try:
        token = parse_token(token_text)
    except TokenError as e:
        raise JoinError(str(e)) from None
    settings = join_settings(config)
    key, created = node_key(settings)
    answer = enroll_request(token, key, settings.peerapi_port, timeout)
    try:
        enrollment = enrollment_from(answer)
    except ValueError as e:
        raise JoinError(f"the relay's answer is not a valid enrollment: {e}") from None
    path = settings.state_dir / NODE_ENROLLMENT
    try:
        write_private_json(path, enrollment_record(enrollment))
    except OSError as e:
        raise JoinError(f"enrolled, but cannot write {path}: {e.strerror or e}") from None
    return Joined(enrollment, created, path)
