"""Credentials: who a connection is, and the tokens that say so.

A *verifier* turns a token into an :class:`Identity` or raises
:class:`~tidewire.errors.Unauthorized` with a short reason that may go to the
client ("token expired", "invalid signature", "malformed token").  Two are
built in:

* :class:`HMACVerifier` checks tokens made by :func:`sign_token`:
  ``base64url(JSON payload) "." base64url(HMAC-SHA256(secret, first part))``,
  no dependency;
* :class:`JWTVerifier` checks JSON Web Tokens (RFC 7519) with PyJWT
  (``pip install 'tidewire[jwt]'``), HS256 or RS256 and friends.

:func:`extract_token` finds the token in an opening handshake: the
``Authorization: Bearer`` header, a ``token.<TOKEN>`` entry of
``Sec-WebSocket-Protocol`` (browsers cannot set headers on a WebSocket) or the
``token`` query parameter.  Log tokens only through :func:`redact`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from tidewire.errors import TokenExpired, Unauthorized
from tidewire.protocol.http import Request

__all__ = [
    "MAX_TOKEN_CHARS",
    "MIN_SECRET_BYTES",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "HMACVerifier",
    "Identity",
    "JWTVerifier",
    "Verifier",
    "extract_token",
    "is_token_subprotocol",
    "redact",
    "sign_token",
    "token_subprotocol",
    "verify",
]

logger = logging.getLogger(__name__)

#: Longest token accepted.  A token travels in one header line, which the
#: handshake parser caps at 8192 bytes (protocol.http.MAX_LINE_BYTES); checking
#: the length first bounds the work an unauthenticated peer can cause.
MAX_TOKEN_CHARS = 8192

#: Shortest HMAC secret: 16 bytes (128 bits) is the least that resists brute
#: force; generate one with ``secrets.token_bytes(32)``.
MIN_SECRET_BYTES = 16

#: Prefix of a ``Sec-WebSocket-Protocol`` offer that carries a token.
TOKEN_SUBPROTOCOL_PREFIX = "token."

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _empty_claims() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: ``user``, the token's ``claims``, and when it expires.

    ``expires_at`` is Unix time in seconds, or None for credentials that do
    not expire.
    """

    user: str
    claims: Mapping[str, Any] = field(default_factory=_empty_claims)
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        """Whether the credentials have expired at Unix time ``now``."""
        return self.expires_at is not None and now >= self.expires_at


#: A token → Identity function, plain or async; it raises Unauthorized on bad tokens.
Verifier: TypeAlias = Callable[[str], "Identity | Awaitable[Identity]"]


async def verify(verifier: Verifier, token: str | None, *, now: float | None = None) -> Identity:
    """Run ``verifier`` on ``token``, awaiting it if needed; Unauthorized on any failure.

    A missing or empty token fails with "missing token".  ``Unauthorized``
    from the verifier passes through (its message is meant for the client);
    any other exception becomes ``Unauthorized("token verification failed")``
    and is logged at DEBUG only, so internals never reach the client.  With
    ``now`` (Unix time), an identity already expired is refused too.
    """
    if not token:
        raise Unauthorized("missing token")
    try:
        result = verifier(token)
        if inspect.isawaitable(result):
            result = await result
    except Unauthorized:
        raise
    except Exception:
        logger.debug("token verifier failed for %s", redact(token), exc_info=True)
        raise Unauthorized("token verification failed") from None
    if not isinstance(result, Identity):
        logger.debug("token verifier returned %r, not an Identity", type(result).__name__)
        raise Unauthorized("token verification failed")
    if now is not None and result.expired(now):
        raise TokenExpired("token expired")
    return result


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Decode unpadded base64url; ValueError if ``text`` is not canonical base64url."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def _secret_bytes(secret: bytes | str) -> bytes:
    """The secret as bytes; ValueError if shorter than MIN_SECRET_BYTES."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"secret too short: {len(key)} bytes < MIN_SECRET_BYTES={MIN_SECRET_BYTES}; "
            "use secrets.token_bytes(32)"
        )
    return key


def _mac(key: bytes, signing_input: str) -> str:
    return _b64encode(hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest())


def sign_token(
    secret: bytes | str,
    user: str,
    *,
    ttl: float | None = 3600,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A token for ``user`` that :class:`HMACVerifier` with the same ``secret`` accepts.

    The payload is ``{"sub": user, "exp": now + ttl, **claims}`` (no ``exp``
    when ``ttl`` is None); ``now`` defaults to ``time.time()``.  ``claims``
    must be JSON-serializable and may not set ``sub`` or ``exp``.  ValueError
    for a short secret, an empty user or a ttl that is not > 0.
    """
    key = _secret_bytes(secret)
    if not isinstance(user, str) or not user:
        raise ValueError(f"user must be a non-empty string, got {user!r}")
    payload: dict[str, Any] = {"sub": user}
    if ttl is not None:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl must be a finite number > 0 or None, got {ttl!r}")
        payload["exp"] = (time.time() if now is None else now) + ttl
    for name, value in (claims or {}).items():
        if name in ("sub", "exp"):
            raise ValueError(f"claims may not set {name!r}: pass user= and ttl= instead")
        payload[name] = value
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False)
    signing_input = _b64encode(body.encode("utf-8"))
    return f"{signing_input}.{_mac(key, signing_input)}"


def _check_length(token: str) -> None:
    if not isinstance(token, str):
        raise Unauthorized("malformed token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized(
            f"token too long: {len(token)} characters > MAX_TOKEN_CHARS={MAX_TOKEN_CHARS}"
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class HMACVerifier:
    """Verify tokens made by :func:`sign_token` (HMAC-SHA256, constant-time compare).

    Refuses, with :class:`Unauthorized`: a malformed token ("malformed
    token"), a wrong signature ("invalid signature"), a ``sub`` that is not a
    non-empty string ("invalid subject"), an ``exp`` in the past by more than
    ``leeway`` seconds ("token expired") and an ``nbf`` in the future
    ("token not yet valid").  ``clock`` gives Unix time (injectable for tests).
    """

    __slots__ = ("_key", "leeway", "clock")

    _key: bytes
    leeway: float
    clock: Callable[[], float]

    def __init__(
        self,
        secret: bytes | str,
        *,
        leeway: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """ValueError if ``secret`` is shorter than 16 bytes or ``leeway`` negative."""
        self._key = _secret_bytes(secret)
        if not (leeway >= 0 and math.isfinite(leeway)):
            raise ValueError(f"leeway must be a finite number >= 0, got {leeway!r}")
        self.leeway = float(leeway)
        self.clock = clock

    def __call__(self, token: str) -> Identity:
        """The identity ``token`` proves; Unauthorized with a short reason otherwise."""
        _check_length(token)
        signing_input, dot, signature = token.partition(".")
        if not dot or not _B64URL.fullmatch(signing_input) or not _B64URL.fullmatch(signature):
            raise Unauthorized("malformed token")
        # Authenticate before parsing: unauthenticated JSON is never decoded.
        if not hmac.compare_digest(_mac(self._key, signing_input), signature):
            raise Unauthorized("invalid signature")
        try:
            payload = json.loads(_b64decode(signing_input))
        except ValueError:
            raise Unauthorized("malformed token") from None
        if not isinstance(payload, dict):
            raise Unauthorized("malformed token")
        user = payload.get("sub")
        if not isinstance(user, str) or not user:
            raise Unauthorized("invalid subject")
        now = self.clock()
        exp = payload.get("exp")
        if exp is not None:
            if not _number(exp):
                raise Unauthorized("malformed token")
            if now >= exp + self.leeway:
                raise TokenExpired("token expired")
        nbf = payload.get("nbf")
        if nbf is not None:
            if not _number(nbf):
                raise Unauthorized("malformed token")
            if now + self.leeway < nbf:
                raise Unauthorized("token not yet valid")
        return Identity(
            user=user,
            claims=MappingProxyType(payload),
            expires_at=None if exp is None else float(exp),
        )

    def __repr__(self) -> str:
        return f"HMACVerifier(secret=<{len(self._key)} bytes>, leeway={self.leeway!r})"


_HMAC_PREFIX = "HS"


class JWTVerifier:
    """Verify JSON Web Tokens (RFC 7519) with PyJWT; ``exp`` is required.

    ``key`` is the HMAC secret for HS256/HS384/HS512 (at least as long as the
    hash: 32 bytes for HS256) or the public key (PEM, or a ``cryptography``
    key object; a private key is reduced to its public half) for RS256 and
    the other public-key algorithms.  Only ``algorithms`` are accepted, never ``none``; HMAC and
    public-key algorithms cannot be mixed, which rules out the RS256 → HS256
    key-confusion attack (a public key used as an HMAC secret).  The key is
    checked against every algorithm once, here: ValueError if it does not fit
    or is shorter than RFC 7518 section 3.2 / NIST allow.

    ``audience`` and ``issuer``, when given, must match (and be present);
    ``user_claim`` names the claim that holds the user.  Every PyJWT error
    becomes :class:`Unauthorized` with a short reason.
    """

    __slots__ = (
        "algorithms",
        "audience",
        "issuer",
        "leeway",
        "user_claim",
        "_key",
        "_decode",
        "_base_error",
        "_reasons",
    )

    algorithms: tuple[str, ...]
    audience: str | None
    issuer: str | None
    leeway: float
    user_claim: str
    _key: Any
    _decode: Callable[..., dict[str, Any]]
    _base_error: type[Exception]
    _reasons: tuple[tuple[type[Exception], str], ...]

    def __init__(
        self,
        key: Any,
        *,
        algorithms: Iterable[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        user_claim: str = "sub",
    ) -> None:
        """ImportError without PyJWT; ValueError for a bad algorithm list or key."""
        try:
            import jwt
            from jwt.algorithms import get_default_algorithms
        except ImportError as exc:
            raise ImportError("JWTVerifier needs PyJWT: pip install 'tidewire[jwt]'") from exc
        algorithms = tuple(algorithms)
        if not algorithms:
            raise ValueError("algorithms must name at least one algorithm, got none")
        if any(alg.lower() == "none" for alg in algorithms):
            raise ValueError(f"algorithm 'none' is never accepted, got algorithms={algorithms!r}")
        families = {alg.startswith(_HMAC_PREFIX) for alg in algorithms}
        if len(families) > 1:
            raise ValueError(
                f"algorithms={algorithms!r} mixes HMAC and public-key algorithms; one key "
                "cannot safely serve both (key confusion)"
            )
        if not (leeway >= 0 and math.isfinite(leeway)):
            raise ValueError(f"leeway must be a finite number >= 0, got {leeway!r}")
        supported = get_default_algorithms()
        prepared: Any = None
        for alg in algorithms:
            if alg not in supported:
                raise ValueError(
                    f"unsupported algorithm {alg!r}: PyJWT here supports {sorted(supported)} "
                    "(public-key algorithms need the 'cryptography' package)"
                )
            algorithm = supported[alg]
            try:
                prepared = algorithm.prepare_key(key)
            except (jwt.InvalidKeyError, TypeError, ValueError) as exc:
                raise ValueError(f"key does not suit algorithm {alg!r}: {exc}") from exc
            too_short = algorithm.check_key_length(prepared)
            if too_short:
                raise ValueError(f"key too short for {alg}: {too_short}")
        public_key = getattr(prepared, "public_key", None)
        if callable(public_key):
            # A private key was given: verifying needs only its public half.
            prepared = public_key()
        self.algorithms = algorithms
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.user_claim = user_claim
        self._key = prepared
        self._decode = jwt.decode
        self._base_error = jwt.PyJWTError
        # Most specific first: the first match wins.
        self._reasons = (
            (jwt.ExpiredSignatureError, "token expired"),
            (jwt.ImmatureSignatureError, "token not yet valid"),
            (jwt.InvalidSignatureError, "invalid signature"),
            (jwt.InvalidAudienceError, "invalid audience"),
            (jwt.InvalidIssuerError, "invalid issuer"),
            (jwt.InvalidIssuedAtError, "invalid issued-at"),
            (jwt.InvalidAlgorithmError, "algorithm not allowed"),
            (jwt.MissingRequiredClaimError, "missing claim"),
            (jwt.DecodeError, "malformed token"),
            (jwt.InvalidKeyError, "invalid key"),
        )

    def __call__(self, token: str) -> Identity:
        """The identity ``token`` proves; Unauthorized with a short reason otherwise."""
        _check_length(token)
        require = ["exp"]
        if self.audience is not None:
            require.append("aud")
        if self.issuer is not None:
            require.append("iss")
        try:
            claims = self._decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": require, "enforce_minimum_key_length": True},
            )
        except self._base_error as exc:
            reason = self._reason(exc)
            if reason == "token expired":
                raise TokenExpired(reason) from None
            raise Unauthorized(reason) from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            raise Unauthorized(f"invalid {self.user_claim} claim")
        return Identity(user=user, claims=MappingProxyType(claims), expires_at=float(claims["exp"]))

    def _reason(self, exc: Exception) -> str:
        for error, reason in self._reasons:
            if isinstance(exc, error):
                if reason == "missing claim":
                    return f"missing claim {getattr(exc, 'claim', '?')!r}"
                return reason
        return "invalid token"

    def __repr__(self) -> str:
        return f"JWTVerifier(algorithms={self.algorithms!r}, audience={self.audience!r})"


def token_subprotocol(token: str) -> str:
    """The ``Sec-WebSocket-Protocol`` offer that carries ``token`` (for clients)."""
    return TOKEN_SUBPROTOCOL_PREFIX + token


def is_token_subprotocol(name: str) -> bool:
    """Whether a subprotocol offer carries a token; a server must never select one."""
    return name.startswith(TOKEN_SUBPROTOCOL_PREFIX)


def _bearer(value: str) -> str | None:
    """The credentials of an ``Authorization: Bearer`` value (RFC 6750 section 2.1)."""
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return None


def extract_token(request: Request) -> tuple[str | None, str | None]:
    """Find the token of an opening handshake: ``(token, source)`` or ``(None, None)``.

    Looked up in order: the ``Authorization: Bearer <token>`` header (scheme
    case-insensitive; source "header"), a ``Sec-WebSocket-Protocol`` offer
    ``token.<TOKEN>`` (source "subprotocol": browsers cannot set headers; the
    server must then select another offer such as ``tidewire.v1``, never echo
    the token), the ``token`` query parameter (source "query": it ends up in
    access logs, so prefer the others).
    """
    for value in request.headers.get_all("Authorization"):
        token = _bearer(value)
        if token is not None:
            return token, "header"
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        for offer in value.split(","):
            offer = offer.strip()
            if is_token_subprotocol(offer) and len(offer) > len(TOKEN_SUBPROTOCOL_PREFIX):
                return offer[len(TOKEN_SUBPROTOCOL_PREFIX) :], "subprotocol"
    for token in request.query.get("token", ()):
        if token:
            return token, "query"
    return None, None


def redact(token: str | None) -> str:
    """A token safe for logs: its first 4 characters and "…" ("…" alone if short)."""
    if token is None:
        return "<none>"
    # Four characters of a short token would be a real share of its secret.
    if len(token) < 16:
        return "…"
    return token[:4] + "…"
