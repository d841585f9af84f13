"""Tests for tidewire.realtime.auth: identities, HMAC and JWT tokens, token extraction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import TokenExpired, Unauthorized
from tidewire.protocol.http import Headers, Request
from tidewire.realtime.auth import (
    MAX_TOKEN_CHARS,
    HMACVerifier,
    Identity,
    JWTVerifier,
    extract_token,
    is_token_subprotocol,
    redact,
    sign_token,
    token_subprotocol,
    verify,
)

SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes: enough for HMAC and HS256
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    """Unpadded base64url, as in JWS and tidewire tokens."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(payload: bytes, secret: bytes = SECRET) -> str:
    """A tidewire token with a valid signature over an arbitrary payload."""
    first = b64(payload)
    mac = hmac.new(secret, first.encode("ascii"), hashlib.sha256).digest()
    return f"{first}.{b64(mac)}"


def clock(value: float = NOW) -> Any:
    """A fixed clock for HMACVerifier."""
    return lambda: value


# --- Identity ------------------------------------------------------------------------------


def test_identity_defaults_and_expiry() -> None:
    """Claims default to empty; expired() compares expires_at with now."""
    forever = Identity("ann")
    assert dict(forever.claims) == {}
    assert forever.expired(1e12) is False
    limited = Identity("ann", {"role": "admin"}, expires_at=100.0)
    assert limited.expired(99.9) is False
    assert limited.expired(100.0) is True


# --- sign_token / HMACVerifier -------------------------------------------------------------


def test_hmac_round_trip() -> None:
    """A signed token verifies to the user, its claims and its expiry."""
    token = sign_token(SECRET, "ann", ttl=60, claims={"role": "admin"}, now=NOW)
    identity = HMACVerifier(SECRET, clock=clock())(token)
    assert identity.user == "ann"
    assert identity.claims["role"] == "admin"
    assert identity.claims["sub"] == "ann"
    assert identity.expires_at == NOW + 60


def test_hmac_token_format() -> None:
    """The token is base64url(JSON payload) '.' base64url(HMAC-SHA256)."""
    token = sign_token(SECRET, "ann", ttl=10, now=NOW)
    first, second = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))
    assert payload == {"sub": "ann", "exp": NOW + 10}
    mac = hmac.new(SECRET, first.encode(), hashlib.sha256).digest()
    assert second == b64(mac)


def test_hmac_str_secret_equals_bytes() -> None:
    """A str secret is its UTF-8 bytes."""
    token = sign_token(SECRET.decode(), "ann", now=NOW)
    assert HMACVerifier(SECRET, clock=clock())(token).user == "ann"


def test_hmac_no_ttl_never_expires() -> None:
    """ttl=None leaves out exp; the identity has no expiry."""
    token = sign_token(SECRET, "ann", ttl=None)
    identity = HMACVerifier(SECRET, clock=clock(1e12))(token)
    assert identity.expires_at is None
    assert "exp" not in identity.claims


def test_hmac_expired() -> None:
    """A token past its exp is refused with 'token expired'."""
    token = sign_token(SECRET, "ann", ttl=60, now=NOW)
    verifier = HMACVerifier(SECRET, clock=clock(NOW + 60))
    with pytest.raises(TokenExpired, match="token expired") as info:
        verifier(token)
    assert info.value.code == "token_expired"
    assert isinstance(info.value, Unauthorized)


def test_hmac_leeway() -> None:
    """leeway accepts a token expired by less than it."""
    token = sign_token(SECRET, "ann", ttl=60, now=NOW)
    assert HMACVerifier(SECRET, leeway=5, clock=clock(NOW + 64))(token).user == "ann"
    with pytest.raises(Unauthorized, match="expired"):
        HMACVerifier(SECRET, leeway=5, clock=clock(NOW + 65))(token)


def test_hmac_not_before() -> None:
    """An nbf claim in the future is refused."""
    token = sign_token(SECRET, "ann", claims={"nbf": NOW + 30}, now=NOW)
    with pytest.raises(Unauthorized, match="not yet valid"):
        HMACVerifier(SECRET, clock=clock())(token)
    assert HMACVerifier(SECRET, clock=clock(NOW + 30))(token).user == "ann"


def test_hmac_wrong_secret() -> None:
    """A token signed with another secret fails with 'invalid signature'."""
    token = sign_token(b"another secret of 32 bytes......", "ann", now=NOW)
    with pytest.raises(Unauthorized, match="invalid signature"):
        HMACVerifier(SECRET, clock=clock())(token)


def test_hmac_tampered_payload() -> None:
    """Changing the payload (e.g. the user) breaks the signature."""
    token = sign_token(SECRET, "ann", now=NOW)
    forged = b64(json.dumps({"sub": "admin", "exp": NOW + 3600}).encode())
    with pytest.raises(Unauthorized, match="invalid signature"):
        HMACVerifier(SECRET, clock=clock())(forged + "." + token.split(".")[1])


def test_hmac_uses_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature comparison goes through hmac.compare_digest."""
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = sign_token(SECRET, "ann", now=NOW)
    HMACVerifier(SECRET, clock=clock())(token)
    assert calls == [(token.split(".")[1], token.split(".")[1])]


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", ".abc", "abc.", "a+b.cd", "ab.c/d", "ab.cd=", "é.x", "a b.cd"],
)
def test_hmac_malformed(token: str) -> None:
    """Anything not shaped like two base64url parts is 'malformed token'."""
    with pytest.raises(Unauthorized, match="malformed token"):
        HMACVerifier(SECRET, clock=clock())(token)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed token"),
        (b"[1, 2]", "malformed token"),
        (b'{"exp": 2e9}', "invalid subject"),
        (b'{"sub": 42, "exp": 2e9}', "invalid subject"),
        (b'{"sub": "", "exp": 2e9}', "invalid subject"),
        (b'{"sub": "ann", "exp": "never"}', "malformed token"),
        (b'{"sub": "ann", "exp": true}', "malformed token"),
        (b'{"sub": "ann", "nbf": "now"}', "malformed token"),
        (b"\xff\xfe", "malformed token"),
    ],
)
def test_hmac_bad_payload_with_valid_signature(payload: bytes, reason: str) -> None:
    """A correctly signed but invalid payload is still refused, with a precise reason."""
    with pytest.raises(Unauthorized, match=reason):
        HMACVerifier(SECRET, clock=clock())(signed(payload))


def test_hmac_too_long() -> None:
    """A token over MAX_TOKEN_CHARS is refused before any work, naming the limit."""
    with pytest.raises(Unauthorized, match="MAX_TOKEN_CHARS=8192") as info:
        HMACVerifier(SECRET, clock=clock())("a" * (MAX_TOKEN_CHARS + 1))
    assert str(MAX_TOKEN_CHARS + 1) in str(info.value)


def test_hmac_non_string_token() -> None:
    """A token that is not a str is malformed, not a crash."""
    with pytest.raises(Unauthorized, match="malformed"):
        HMACVerifier(SECRET)(b"abc.def")  # type: ignore[arg-type]


def test_short_secret_is_refused() -> None:
    """Secrets under 16 bytes are ValueErrors naming the limit and the size."""
    with pytest.raises(ValueError, match=r"15 bytes < MIN_SECRET_BYTES=16"):
        HMACVerifier(b"x" * 15)
    with pytest.raises(ValueError, match="MIN_SECRET_BYTES"):
        sign_token("short", "ann")
    assert HMACVerifier(b"x" * 16).leeway == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"claims": {"sub": "root"}}, "'sub'"),
        ({"claims": {"exp": 1}}, "'exp'"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"claims": {"x": float("nan")}}, "JSON|Out of range"),
    ],
)
def test_sign_token_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    """sign_token refuses claims that override sub/exp, non-positive ttl and non-JSON values."""
    with pytest.raises(ValueError, match=match):
        sign_token(SECRET, "ann", **kwargs)


def test_sign_token_rejects_empty_user() -> None:
    """An empty user is a ValueError."""
    with pytest.raises(ValueError, match="user"):
        sign_token(SECRET, "")


def test_hmac_verifier_rejects_negative_leeway() -> None:
    """A negative leeway is a ValueError naming it."""
    with pytest.raises(ValueError, match="leeway"):
        HMACVerifier(SECRET, leeway=-1)


def test_hmac_verifier_repr_hides_secret() -> None:
    """repr() never shows the secret."""
    assert SECRET.decode() not in repr(HMACVerifier(SECRET))


@settings(max_examples=200, deadline=None)
@given(
    user=st.text(min_size=1, max_size=40),
    claims=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("sub", "exp", "nbf")),
        st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
        max_size=5,
    ),
)
def test_hmac_round_trip_property(user: str, claims: dict[str, Any]) -> None:
    """Any user and JSON claims survive sign_token → HMACVerifier."""
    identity = HMACVerifier(SECRET, clock=clock())(sign_token(SECRET, user, claims=claims, now=NOW))
    assert identity.user == user
    assert {k: identity.claims[k] for k in claims} == claims


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_hmac_any_single_change_is_refused(data: st.DataObject) -> None:
    """Changing any one character of a valid token makes it fail."""
    token = sign_token(SECRET, "ann", claims={"room": "lobby"}, now=NOW)
    index = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    char = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
    forged = token[:index] + char + token[index + 1 :]
    try:
        identity = HMACVerifier(SECRET, clock=clock())(forged)
    except Unauthorized:
        return
    # Base64 can encode the same bytes twice only via the unused low bits of the last
    # character; a canonical comparison of the signature text refuses even that.
    pytest.fail(f"forged token accepted: {forged!r} -> {identity!r}")


# --- verify --------------------------------------------------------------------------------


async def test_verify_sync_and_async_verifiers() -> None:
    """verify() returns the identity of plain and async verifiers alike."""

    async def async_verifier(token: str) -> Identity:
        return Identity(user=token.upper())

    assert (await verify(lambda token: Identity(user=token), "ann")).user == "ann"
    assert (await verify(async_verifier, "bob")).user == "BOB"


async def test_verify_passes_unauthorized_through() -> None:
    """A verifier's own Unauthorized keeps its client-facing message."""

    def verifier(token: str) -> Identity:
        raise Unauthorized("token revoked")

    with pytest.raises(Unauthorized, match="token revoked"):
        await verify(verifier, "abc")


async def test_verify_hides_other_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Other exceptions become a generic Unauthorized; the original is logged at DEBUG only."""

    async def verifier(token: str) -> Identity:
        raise KeyError("db password is hunter2")

    caplog.set_level(logging.DEBUG, logger="tidewire.realtime.auth")
    with pytest.raises(Unauthorized) as info:
        await verify(verifier, "abcdefghijklmnopqrstuvwxyz")
    assert str(info.value) == "token verification failed"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "hunter2" not in str(info.value)
    records = [r for r in caplog.records if r.name == "tidewire.realtime.auth"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert records[0].exc_info is not None and "hunter2" in str(records[0].exc_info[1])
    assert "abcdefghijklmnopqrstuvwxyz" not in caplog.text


async def test_verify_missing_token() -> None:
    """An empty or missing token fails without calling the verifier."""
    called: list[str] = []

    def verifier(token: str) -> Identity:
        called.append(token)
        return Identity("x")

    for token in ("", None):
        with pytest.raises(Unauthorized, match="missing token"):
            await verify(verifier, token)
    assert called == []


async def test_verify_refuses_non_identity() -> None:
    """A verifier that returns something else than an Identity fails closed."""
    with pytest.raises(Unauthorized, match="token verification failed"):
        await verify(lambda token: None, "abc")  # type: ignore[arg-type,return-value]


async def test_verify_checks_expiry_with_now() -> None:
    """With now, an identity already expired is refused."""
    identity = Identity("ann", expires_at=100.0)
    assert await verify(lambda token: identity, "t", now=99.0) is identity
    with pytest.raises(Unauthorized, match="token expired"):
        await verify(lambda token: identity, "t", now=100.0)


async def test_verify_with_hmac_verifier() -> None:
    """The built-in verifier plugs into verify()."""
    token = sign_token(SECRET, "ann", now=NOW)
    assert (await verify(HMACVerifier(SECRET, clock=clock()), token)).user == "ann"


# --- JWTVerifier ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> Iterator[tuple[bytes, bytes]]:
    """A fresh 2048-bit RSA key pair as (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    yield private, public


def claims(**extra: Any) -> dict[str, Any]:
    """Valid JWT claims for ann, expiring in an hour."""
    return {"sub": "ann", "exp": int(time.time()) + 3600, **extra}


def test_jwt_hs256_round_trip() -> None:
    """An HS256 token verifies to its subject, claims and expiry."""
    body = claims(role="admin")
    token = jwt.encode(body, SECRET, algorithm="HS256")
    identity = JWTVerifier(SECRET)(token)
    assert identity.user == "ann"
    assert identity.claims["role"] == "admin"
    assert identity.expires_at == body["exp"]


def test_jwt_rs256_round_trip(rsa_keys: tuple[bytes, bytes]) -> None:
    """An RS256 token verifies with the PEM public key (or the private key's public half)."""
    private, public = rsa_keys
    token = jwt.encode(claims(), private, algorithm="RS256")
    assert JWTVerifier(public, algorithms=("RS256",))(token).user == "ann"
    assert JWTVerifier(private, algorithms=["RS256"])(token).user == "ann"
    assert JWTVerifier(public.decode(), algorithms=["RS256"])(token).user == "ann"


def test_jwt_rs256_wrong_key(rsa_keys: tuple[bytes, bytes]) -> None:
    """An RS256 token signed by another key fails with 'invalid signature'."""
    _, public = rsa_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    with pytest.raises(Unauthorized, match="invalid signature"):
        JWTVerifier(public, algorithms=("RS256",))(token)


def test_jwt_key_confusion_rs256_to_hs256(rsa_keys: tuple[bytes, bytes]) -> None:
    """An HS256 token 'signed' with the server's public key is refused by an RS256 verifier."""
    _, public = rsa_keys
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(sub="admin")).encode())
    signing_input = f"{header}.{payload}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    with pytest.raises(Unauthorized, match="algorithm not allowed"):
        JWTVerifier(public, algorithms=("RS256",))(forged)


def test_jwt_refuses_mixed_families(rsa_keys: tuple[bytes, bytes]) -> None:
    """A verifier cannot be configured to accept HMAC and public-key algorithms at once."""
    _, public = rsa_keys
    with pytest.raises(ValueError, match="key confusion"):
        JWTVerifier(public, algorithms=("RS256", "HS256"))


def test_jwt_refuses_public_key_as_hmac_secret(rsa_keys: tuple[bytes, bytes]) -> None:
    """A PEM public key given as an HS256 secret is refused at construction."""
    _, public = rsa_keys
    with pytest.raises(ValueError, match="does not suit algorithm 'HS256'"):
        JWTVerifier(public, algorithms=("HS256",))


def test_jwt_alg_none_is_refused() -> None:
    """An unsigned token (alg: none) never verifies."""
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    with pytest.raises(Unauthorized, match="algorithm not allowed"):
        JWTVerifier(SECRET)(f"{header}.{payload}.")


@pytest.mark.parametrize("algorithms", [("none",), ("HS256", "None"), ()])
def test_jwt_refuses_none_or_empty_algorithms(algorithms: tuple[str, ...]) -> None:
    """'none' (any case) or an empty list is a configuration error."""
    with pytest.raises(ValueError, match="algorithm"):
        JWTVerifier(SECRET, algorithms=algorithms)


def test_jwt_algorithm_outside_the_list() -> None:
    """A token signed with an algorithm not listed fails, even with the right key."""
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    with pytest.raises(Unauthorized, match="algorithm not allowed"):
        JWTVerifier(SECRET * 2, algorithms=("HS256",))(token)


def test_jwt_unsupported_algorithm() -> None:
    """An algorithm PyJWT does not know is a ValueError naming it."""
    with pytest.raises(ValueError, match="'HS999'"):
        JWTVerifier(SECRET, algorithms=("HS999",))


def test_jwt_short_hmac_key() -> None:
    """An HS256 key under 32 bytes (RFC 7518 section 3.2) is refused at construction."""
    with pytest.raises(ValueError, match="16 bytes"):
        JWTVerifier(b"x" * 16)


def test_jwt_expired() -> None:
    """An expired JWT fails with 'token expired'; leeway can tolerate clock skew."""
    token = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="token expired"):
        JWTVerifier(SECRET)(token)
    assert JWTVerifier(SECRET, leeway=60)(token).user == "ann"


def test_jwt_requires_exp() -> None:
    """A JWT without exp is refused, naming the claim."""
    token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="missing claim 'exp'"):
        JWTVerifier(SECRET)(token)


def test_jwt_not_yet_valid() -> None:
    """A JWT whose nbf is in the future is refused."""
    token = jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="not yet valid"):
        JWTVerifier(SECRET)(token)


def test_jwt_audience_and_issuer() -> None:
    """audience and issuer must match when configured, and be present."""
    verifier = JWTVerifier(SECRET, audience="chat", issuer="https://id.example")
    good = jwt.encode(claims(aud="chat", iss="https://id.example"), SECRET, algorithm="HS256")
    assert verifier(good).user == "ann"
    wrong_aud = jwt.encode(claims(aud="mail", iss="https://id.example"), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="invalid audience"):
        verifier(wrong_aud)
    wrong_iss = jwt.encode(claims(aud="chat", iss="https://evil.example"), SECRET, "HS256")
    with pytest.raises(Unauthorized, match="invalid issuer"):
        verifier(wrong_iss)
    no_aud = jwt.encode(claims(iss="https://id.example"), SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="missing claim 'aud'"):
        verifier(no_aud)


def test_jwt_wrong_secret() -> None:
    """An HS256 token signed with another secret fails with 'invalid signature'."""
    token = jwt.encode(claims(), b"another secret of 32 bytes......", algorithm="HS256")
    with pytest.raises(Unauthorized, match="invalid signature"):
        JWTVerifier(SECRET)(token)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "a" * (MAX_TOKEN_CHARS + 1)])
def test_jwt_malformed(token: str) -> None:
    """Garbage or oversized tokens fail with Unauthorized, never another exception."""
    with pytest.raises(Unauthorized, match="malformed|too long"):
        JWTVerifier(SECRET)(token)


def test_jwt_user_claim() -> None:
    """user_claim picks the claim that names the user; it must be a non-empty string."""
    token = jwt.encode(claims(email="ann@example.com"), SECRET, algorithm="HS256")
    assert JWTVerifier(SECRET, user_claim="email")(token).user == "ann@example.com"
    with pytest.raises(Unauthorized, match="invalid uid claim"):
        JWTVerifier(SECRET, user_claim="uid")(token)


def test_jwt_without_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyJWT the constructor says how to install it."""
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(ImportError, match=r"pip install 'tidewire\[jwt\]'"):
        JWTVerifier(SECRET)


@settings(max_examples=100, deadline=None)
@given(token=st.text(max_size=300))
def test_jwt_random_input_only_raises_unauthorized(token: str) -> None:
    """Arbitrary text never escapes as anything but Unauthorized."""
    with pytest.raises(Unauthorized):
        JWTVerifier(SECRET)(token)


# --- extract_token / redact ----------------------------------------------------------------


def request(target: str = "/ws", headers: list[tuple[str, str]] | None = None) -> Request:
    """A GET request for the handshake tests."""
    return Request("GET", target, Headers(headers or []))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_extract_from_authorization_header(scheme: str) -> None:
    """Authorization: Bearer wins, whatever the scheme's case."""
    req = request(
        "/ws?token=fromquery",
        [
            ("Authorization", f"{scheme}  abc.def "),
            ("Sec-WebSocket-Protocol", "tidewire.v1, token.fromproto"),
        ],
    )
    assert extract_token(req) == ("abc.def", "header")


def test_extract_from_subprotocol() -> None:
    """A token.<TOKEN> offer is found among other offers and headers."""
    req = request(
        "/ws?token=fromquery",
        [
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Sec-WebSocket-Protocol", "tidewire.v1"),
            ("Sec-WebSocket-Protocol", "chat , token.abc.def"),
        ],
    )
    assert extract_token(req) == ("abc.def", "subprotocol")


def test_extract_from_query() -> None:
    """The token query parameter is the last resort."""
    assert extract_token(request("/ws?room=1&token=abc.def")) == ("abc.def", "query")


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ws", []),
        ("/ws?token=", [("Authorization", "Bearer ")]),
        ("/ws", [("Authorization", "Basic abc")]),
        ("/ws", [("Sec-WebSocket-Protocol", "token., tidewire.v1, tokenabc")]),
    ],
)
def test_extract_nothing(target: str, headers: list[tuple[str, str]]) -> None:
    """No usable token gives (None, None)."""
    assert extract_token(request(target, headers)) == (None, None)


def test_token_subprotocol_helpers() -> None:
    """token_subprotocol builds the offer that is_token_subprotocol recognizes."""
    offer = token_subprotocol("abc.def")
    assert offer == "token.abc.def"
    assert is_token_subprotocol(offer)
    assert not is_token_subprotocol("tidewire.v1")
    req = request(headers=[("Sec-WebSocket-Protocol", f"tidewire.v1, {offer}")])
    assert extract_token(req) == ("abc.def", "subprotocol")


def test_redact() -> None:
    """redact keeps only the first 4 characters of a token, none of a short one."""
    token = sign_token(SECRET, "ann", now=NOW)
    assert redact(token) == token[:4] + "…"
    assert redact("short") == "…"
    assert redact(None) == "<none>"
