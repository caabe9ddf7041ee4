"""The Twisted glue of access policies: `Access` holds the node's policies and their refusal
counters; `Guarded` is the resource MountRouter puts in front of a guarded mount.

A request passes the steps of docs/access.md in order; a refusal is answered (403, 401 with
WWW-Authenticate, 429 with Retry-After, 413), logged with the client's ip:port, the host, the
path and the reason, and counted by reason. What passes reaches the mount's own resource with
the identity set for the backend (`REMOTE_IDENTITY`, read by serve/proxy.py) and the client's
Authorization removed once it was used here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.http import RESPONSES
from twisted.web.server import NOT_DONE_YET, Request

from ...config.model import AccessPolicy
from ...flow import Flow
from ...web.hostport import format_host_port
from ...web.paths import request_target
from ..http2 import h2_connection, reset_stream
from ..model import HTTPHandler, ServeConfig, match_mount
from ..notes import request_notes
from ..streaming import MAX_BUFFERED_BODY, wants_stream
from .credentials import Credentials
from .forward import ForwardAuth, request_headers
from .oidc import (
    CALLBACK,
    LOGIN_COOKIE,
    LOGIN_LIFETIME,
    LOGOUT,
    Login,
    LoginError,
    OIDCClient,
    cookie_header,
    load_session_key,
    safe_return,
    session_cookie,
    state_matches,
    unseal,
)
from .policy import Identity, Pending, Policy, Refusal

__all__ = ["REMOTE_IDENTITY", "Access", "Guarded", "parameters_change_policy"]

log = Logger()

REMOTE_IDENTITY = "remote_identity"
"""The request attribute holding the Remote-* headers the backend gets (name -> value)."""

SlowCall = Callable[[Callable[[], str | None]], "defer.Deferred[str | None]"]


def _in_thread(reactor: Any) -> SlowCall:
    def run(call: Callable[[], str | None]) -> defer.Deferred[str | None]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), call)

    return run


class Access:
    """Every [access NAME] of the node, built once; counters of refusals by reason."""

    def __init__(
        self,
        policies: Iterable[AccessPolicy],
        reactor: Any,
        slow: SlowCall | None = None,
        state_dir: Path | None = None,
    ) -> None:
        policies = list(policies)
        self.reactor = reactor
        self.slow = slow if slow is not None else _in_thread(reactor)
        self.counters: dict[str, int] = {}
        self.policies = {p.name: Policy(p, self._file_error(p.name)) for p in policies}
        self.forward = {
            p.name: ForwardAuth(p.forward_auth, reactor)
            for p in policies
            if p.forward_auth is not None
        }
        self.oidc: dict[str, OIDCClient] = {}
        with_oidc = [p for p in policies if p.oidc_issuer is not None]
        if with_oidc:
            key = load_session_key(state_dir if state_dir is not None else Path("state"))
            self.session_key = key
            self.oidc = {p.name: OIDCClient(p, key, reactor) for p in with_oidc}

    def _file_error(self, name: str) -> Callable[[str], None]:
        def report(why: str) -> None:
            self.count("allow_file_errors")
            log.warn("[access {name}]: {why}", name=name, why=why)

        return report

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def refused(self, policy: str, flow: Flow, host: str, what: str, reason: str) -> None:
        self.count(reason)
        log.info(
            "refused {what} from {client} for {host}: {reason} (access {policy})",
            what=what,
            client=format_host_port(*flow.client),
            host=host,
            reason=reason,
            policy=policy,
        )

    def guard(
        self, name: str, inner: Any, request: Request, flow: Flow, host: str, path: str
    ) -> Any:
        """``inner`` (a leaf resource) behind the policy ``name``, for ``request`` (its head)."""
        guarded = Guarded(self, self.policies[name], inner, flow, host, path)
        guarded.forward = self.forward.get(name)
        limit = guarded.policy.config.max_request_body
        if (
            limit is not None
            and limit <= MAX_BUFFERED_BODY
            and request.getHeader(b"content-length") is None
        ):
            # a body of unknown length under a small limit is buffered (bounded) and checked
            # whole, so the client gets a clean 413 before anything reaches the backend
            guarded.streams_request_body = False
        return guarded

    def certificate_check(self, name: str, flow: Flow) -> Callable[[Any], bool]:
        """For a tls-terminated-tcp port: after the handshake, whether the client's
        certificate satisfies the policy (refusals logged and counted)."""
        policy = self.policies[name]

        def check(transport: Any) -> bool:
            try:
                handle = transport.getHandle()
                leaf = handle.get_peer_certificate(as_cryptography=True)
                chain = list(handle.get_peer_cert_chain(as_cryptography=True) or [])
            except Exception:
                leaf, chain = None, []
            result = policy.check_certificate(leaf, chain)
            if isinstance(result, Refusal):
                self.refused(name, flow, f"{flow.host}:{flow.port}", "connection", result.reason)
                return False
            return True

        return check

    def wants_client_certificates(self, serve: ServeConfig, port: int, handler: Any) -> bool:
        """Whether TLS on ``port`` asks for a client certificate: some policy applied there
        (the port's own, or a mount's on any site of that port) has client-ca-file."""
        names = {getattr(handler, "access", None)}
        if getattr(handler, "https", False):
            suffix = f":{port}"
            names |= {
                h.access for site, mounts in serve.web.items() if site.endswith(suffix)
                for h in mounts.values()
            }  # fmt: skip
        return any(self.policies[n].client_ca is not None for n in names if n in self.policies)

    def reserved(self, path: str, flow: Flow, host: str) -> Any:
        """The OIDC callback and logout paths, on every name of the node: the node's own."""
        if self.oidc and path in (CALLBACK, LOGOUT):
            return OIDCEndpoint(self, path, flow, host)
        return None

    def forget_own_cookies(self, request: Request) -> None:
        """Every request, guarded mount or not: the node's session cookies (``Path=/``, so a
        browser sends them everywhere) never reach a backend, not even an open mount's."""
        if self.oidc:
            strip_own_cookies(request)

    @staticmethod
    def ambiguous(mounts: dict[str, HTTPHandler], path: str) -> bool:
        return parameters_change_policy(mounts, path)

    def admits_connection(self, name: str, flow: Flow, host: str) -> bool:
        """A non-HTTP port: deny/allow and the rate of new connections."""
        refusal = self.policies[name].check_connection(flow.client[0], self.reactor.seconds())
        if refusal is None:
            return True
        self.refused(name, flow, f"{host}:{flow.port}", "connection", refusal.reason)
        return False


def parameters_change_policy(mounts: dict[str, HTTPHandler], path: str) -> bool:
    """Whether ``;parameters`` in the path pick a mount whose policy differs from the one
    the path without them picks: ``/admin;x/`` is ``/admin/`` to Tomcat, Spring and others
    that strip path parameters, so it must not slip past /admin/'s policy through "/"."""
    if ";" not in path:
        return False
    plain = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    with_params, without = match_mount(mounts, path), match_mount(mounts, plain)
    policies = [None if m is None else m[1].access for m in (with_params, without)]
    return policies[0] != policies[1]


def cookie(request: Request, name: str) -> str | None:
    """One cookie's value from the request's Cookie headers (HTTP/2 may send several)."""
    for header in request.requestHeaders.getRawHeaders(b"cookie", []):
        for part in header.split(b";"):
            key, eq, value = part.strip().partition(b"=")
            if eq and key.decode("latin-1") == name:
                return value.decode("latin-1")
    return None


def strip_own_cookies(request: Request) -> None:
    """Remove the node's ``__Host-funnel-tw-*`` cookies from what the backend gets."""
    headers = request.requestHeaders.getRawHeaders(b"cookie")
    if not headers or not any(_OWN_COOKIE in h for h in headers):
        return
    kept = [
        part.strip()
        for header in headers
        for part in header.split(b";")
        if part.strip() and not part.strip().startswith(_OWN_COOKIE)
    ]
    if kept:
        request.requestHeaders.setRawHeaders(b"cookie", [b"; ".join(kept)])
    else:
        request.requestHeaders.removeHeader(b"cookie")


_OWN_COOKIE = b"__Host-funnel-tw-"


def callback_url(request: Request, host: str) -> str:
    """https://HOST[:PORT]/.funnel-tw/oidc/callback, for the name the client asked (the Host
    header when it names the TLS server name, else that name)."""
    given = (request.getHeader(b"host") or b"").decode("ascii", "replace").lower()
    name = given.rpartition(":")[0] if given.rpartition(":")[2].isdigit() else given
    authority = given if name.rstrip(".") == host.lower() else host
    return f"https://{authority}{CALLBACK}"


def policy_challenge(policy: Policy, reason: str) -> Refusal:
    """401: with Basic/Bearer challenges where the policy takes them."""
    return policy.challenge(reason)


def peer_certificates(request: Request) -> tuple[Any, list[Any]]:
    """The client certificate of the TLS connection a request came on (HTTP/1.1 or HTTP/2),
    and the rest of the chain it sent; (None, []) without one."""
    for holder in (request.channel, h2_connection(request)):
        get_handle = getattr(getattr(holder, "transport", None), "getHandle", None)
        if get_handle is None:
            continue
        try:
            handle = get_handle()
            leaf = handle.get_peer_certificate(as_cryptography=True)
            chain = handle.get_peer_cert_chain(as_cryptography=True) or []
        except Exception:
            return None, []
        return leaf, list(chain)
    return None, []


class _RefusalPage(resource.Resource):
    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self.refusal = refusal

    def render(self, request: Request) -> bytes:
        status = self.refusal.status
        request.setResponseCode(status)
        for name, value in self.refusal.headers:
            request.responseHeaders.addRawHeader(name, value)
        if self.refusal.body is not None:  # a forward-auth service's answer, as it was
            return self.refusal.body
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"%d %s\n" % (status, RESPONSES.get(status, b"Refused"))


class Guarded(resource.Resource):
    """One request's way through a policy to the mount's resource."""

    isLeaf = True

    def __init__(
        self, access: Access, policy: Policy, inner: Any, flow: Flow, host: str, path: str
    ) -> None:
        super().__init__()
        self.access = access
        self.policy = policy
        self.inner = inner
        self.flow = flow
        self.host = host
        self.path = path
        self.streams_request_body = wants_stream(inner)
        self.forward: ForwardAuth | None = None

    def render(self, request: Request) -> Any:
        policy = self.policy
        now = self.access.reactor.seconds()
        refusal = policy.check_connection(self.flow.client[0], now) or self._body(request)
        if refusal is not None:
            return self._refuse(request, refusal)
        certified = policy.check_certificate(*peer_certificates(request))
        if isinstance(certified, Refusal):
            return self._refuse(request, certified)
        oidc = self.access.oidc.get(policy.name)
        if oidc is not None:
            session = oidc.session(cookie(request, session_cookie(policy.name)))
            if session is not None:
                return self._after_credentials(request, session)
            if not policy.wants_credentials or request.getHeader(b"authorization") is None:
                return self._login(request, oidc)
        if not policy.wants_credentials:
            return self._after_credentials(request, certified)
        result = policy.check_credentials(request.getHeader(b"authorization"))
        if isinstance(result, Pending):
            credentials: Credentials = policy.credentials
            d = self.access.slow(lambda: credentials.verify_basic(result.credential))
            d.addCallback(lambda user: policy.basic_done(result, user))
            d.addCallbacks(lambda r: self._later(request, r), lambda f: self._failed(request, f))
            return NOT_DONE_YET
        if isinstance(result, Refusal):
            return self._refuse(request, result)
        return self._after_credentials(request, result, used=True)

    def _login(self, request: Request, oidc: OIDCClient) -> Any:
        """No session: a browser's GET goes to the provider; anything else gets 401."""
        if request.method not in (b"GET", b"HEAD"):
            return self._refuse(request, policy_challenge(self.policy, "oidc_no_session"))
        _, query = request_target(request)
        return_to = self.path + (f"?{query}" if query else "")
        d = defer.ensureDeferred(oidc.start(callback_url(request, self.host), return_to))

        def redirect(login: Login) -> None:
            if self._gone(request):
                return
            request.setResponseCode(302)
            request.setHeader(b"location", login.location.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.responseHeaders.addRawHeader(
                b"set-cookie", cookie_header(LOGIN_COOKIE, login.cookie, LOGIN_LIFETIME)
            )
            request.finish()

        def failed(failure: Failure) -> None:
            log.info("OIDC discovery for [access {name}] failed: {why}",
                     name=self.policy.name, why=failure.getErrorMessage())  # fmt: skip
            self._later(request, Refusal(503, "oidc_provider_unavailable"))

        d.addCallbacks(redirect, failed)
        return NOT_DONE_YET

    def _after_credentials(
        self, request: Request, identity: Identity | None, used: bool = False
    ) -> Any:
        """The last step, forward-auth, if the policy has it; then the mount. ``used``: the
        client's Authorization was checked here, so it is not passed on."""
        if used:
            request.requestHeaders.removeHeader(b"authorization")
        strip_own_cookies(request)  # a session cookie is a credential: not for the backend
        if self.forward is None:
            return self._pass(request, identity)
        _, query = request_target(request)
        uri = self.path + (f"?{query}" if query else "")
        headers = request_headers(
            list(request.requestHeaders.getAllRawHeaders()),
            request.method,
            request.getHeader(b"host") or self.host.encode(),
            uri.encode("utf-8", "surrogateescape"),
            self.flow.client[0],
        )
        d = defer.ensureDeferred(self.forward.ask(headers))
        d.addCallback(lambda answer: answer if answer is not None else identity)
        d.addCallbacks(lambda r: self._later(request, r, True), lambda f: self._failed(request, f))
        return NOT_DONE_YET

    def _body(self, request: Request) -> Refusal | None:
        """413 for a declared length over the limit; a chunked body is counted as it comes."""
        limit = self.policy.config.max_request_body
        if limit is None:
            return None
        length = request.getHeader(b"content-length")
        if length is not None:
            return self.policy.check_body(int(length) if length.isdigit() else limit + 1)
        body = getattr(request, "body", None)
        if body is not None:  # streamed to the backend: stop it where it goes over
            feed = body.feed

            def counted(data: bytes) -> None:
                if body.received + len(data) > limit:
                    if not body.stopped:
                        self._over_limit(request)
                    body.stopped = True
                feed(data)

            body.feed = counted
            return None
        content = getattr(request, "content", None)
        if content is not None and content.seek(0, 2) > limit:  # buffered already
            content.seek(0)
            return Refusal(413, "body_too_large")
        if content is not None:
            content.seek(0)
        return None

    def _over_limit(self, request: Request) -> None:
        """A streamed body went over the limit while the backend was receiving it: cut the
        request (HTTP/2: reset the stream; HTTP/1.1: abort the connection), as when a client
        leaves, so the backend never gets the rest."""
        self.access.refused(
            self.policy.name, self.flow, self.host, self._what(request), "body_too_large"
        )
        stream = request.channel
        if reset_stream(request):
            # Twisted forgets a stream it resets without telling its request: tell it, so
            # the proxy gives up the backend as it does for a client that left
            stream.connectionLost(Failure(ConnectionLost("request body over max-request-body")))
            return
        transport = getattr(request, "transport", None) or request.channel
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _what(self, request: Request) -> str:
        return f"{request.method.decode('ascii', 'replace')} {self.path}"

    def _refuse(self, request: Request, refusal: Refusal) -> Any:
        request_notes(request)["reason"] = refusal.reason
        self.access.refused(
            self.policy.name, self.flow, self.host, self._what(request), refusal.reason
        )
        return _RefusalPage(refusal).render(request)

    def _pass(self, request: Request, identity: Identity | None) -> Any:
        if identity is not None:
            setattr(request, REMOTE_IDENTITY, identity.headers())
            request_notes(request)["user"] = identity.user
        return self.inner.render(request)

    def _gone(self, request: Request) -> bool:
        return bool(getattr(request, "_disconnected", False) or request.finished)

    def _later(
        self, request: Request, result: Identity | Refusal | None, final: bool = False
    ) -> None:
        """The end of a slow check: render the refusal, or go on (``final``: to the mount),
        as Request.render does."""
        if self._gone(request):
            return
        if isinstance(result, Refusal):
            request_notes(request)["reason"] = result.reason
            self.access.refused(
                self.policy.name, self.flow, self.host, self._what(request), result.reason
            )
            request.render(_RefusalPage(result))
            return
        request.render(_Passed(self, result, final))

    def _failed(self, request: Request, failure: Failure) -> None:
        log.failure("access check failed", failure)
        if not self._gone(request):
            request.render(_RefusalPage(Refusal(500, "check_failed")))


class _Passed(resource.Resource):
    isLeaf = True

    def __init__(self, guarded: Guarded, identity: Identity | None, final: bool) -> None:
        super().__init__()
        self.guarded = guarded
        self.identity = identity
        self.final = final  # forward-auth answered: nothing is left to check

    def render(self, request: Request) -> Any:
        if self.final:
            return self.guarded._pass(request, self.identity)
        return self.guarded._after_credentials(request, self.identity, used=True)


class OIDCEndpoint(resource.Resource):
    """The callback (finish a login, set the session) and logout paths."""

    isLeaf = True

    def __init__(self, access: Access, path: str, flow: Flow, host: str) -> None:
        super().__init__()
        self.access = access
        self.path = path
        self.flow = flow
        self.host = host

    def _refuse(self, request: Request, status: int, reason: str, policy: str = "-") -> bytes:
        self.access.refused(policy, self.flow, self.host, f"GET {self.path}", reason)
        request.responseHeaders.addRawHeader(b"set-cookie", cookie_header(LOGIN_COOKIE, "", 0))
        return _RefusalPage(Refusal(status, reason)).render(request)

    def render(self, request: Request) -> Any:
        if self.path == LOGOUT:
            for name in self.access.oidc:
                request.responseHeaders.addRawHeader(
                    b"set-cookie", cookie_header(session_cookie(name), "", 0)
                )
            request.responseHeaders.addRawHeader(b"set-cookie", cookie_header(LOGIN_COOKIE, "", 0))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return b"logged out\n"
        login = unseal(self.access.session_key, cookie(request, LOGIN_COOKIE))
        policy = str((login or {}).get("p"))
        client = self.access.oidc.get(policy)
        if login is None or client is None or not isinstance(login.get("x"), int):
            return self._refuse(request, 400, "oidc_no_login")
        if login["x"] < client.now():
            return self._refuse(request, 400, "oidc_login_expired", policy)
        args = request.args or {}
        state = (args.get(b"state") or [b""])[0].decode("ascii", "replace")
        code = (args.get(b"code") or [b""])[0].decode("ascii", "replace")
        if not state_matches(login, state):
            return self._refuse(request, 400, "oidc_bad_state", policy)
        if args.get(b"error") or not code:
            return self._refuse(request, 403, "oidc_provider_refused", policy)
        d = defer.ensureDeferred(client.finish(login, code))

        def done(result: tuple[Identity, str]) -> None:
            identity, session = result
            if getattr(request, "_disconnected", False) or request.finished:
                return
            log.info(
                "OIDC login of {user} from {client} for {host} (access {policy})",
                user=identity.user,
                client=format_host_port(*self.flow.client),
                host=self.host,
                policy=policy,
            )
            request.setResponseCode(302)
            request.setHeader(b"location", safe_return(str(login.get("r", "/"))).encode())
            request.setHeader(b"cache-control", b"no-store")
            lifetime = int(client.config.oidc_session_lifetime)
            request.responseHeaders.addRawHeader(
                b"set-cookie", cookie_header(session_cookie(policy), session, lifetime)
            )
            request.responseHeaders.addRawHeader(b"set-cookie", cookie_header(LOGIN_COOKIE, "", 0))
            request.finish()

        def failed(failure: Failure) -> None:
            if getattr(request, "_disconnected", False) or request.finished:
                return
            error = failure.value
            reason = error.reason if isinstance(error, LoginError) else "oidc_provider_error"
            log.info("OIDC login failed: {why}", why=failure.getErrorMessage())
            request.write(self._refuse(request, 403, reason, policy))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET
