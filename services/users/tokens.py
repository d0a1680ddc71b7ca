"""RS256 access tokens: the signing key, issuing, and the JWKS this service publishes.

Verification is not here but in services/kit/tokens.py, which the gateway uses too: issuer,
audience, algorithm and required claims are checked the same way everywhere.

A token carries `ver`, its user's token version when it was issued. The signature cannot say
whether the user has since changed their password or role or been deleted; the gateway compares
`ver` with the users service's current value for that (services/gateway/auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# Verification is the kit's (services/kit/tokens.py); re-exported for this service's callers.
from services.kit.tokens import ALGORITHM, AUDIENCE, ISSUER, Claims, InvalidToken, TokenRole, verify_token

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "ISSUER",
    "Claims",
    "InvalidToken",
    "IssuedToken",
    "TokenIssuer",
    "TokenRole",
    "verify_token",
]

KEY_FILE_NAME = "users-jwt-key.pem"
RSA_KEY_BITS = 2048


log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}


def jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_KEY_BITS:
        raise ValueError(f"the JWT signing key must be an RSA key of at least {RSA_KEY_BITS} bits")
    return key


def load_or_create_key_file(data_dir: Path) -> rsa.RSAPrivateKey:
    """The key kept in the data dir, created (mode 0600) on first start so restarts keep it.

    Two processes starting at once must end up with the same key: the new key is written to a
    private temporary file and published with `os.link`, which fails if the file already exists, and
    then the loser reads the winner's key.
    """
    path = data_dir / KEY_FILE_NAME
    if path.exists():
        return load_private_key(path.read_bytes())
    data_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp_name = tempfile.mkstemp(dir=data_dir, prefix=".users-jwt-key-")  # created with mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return load_private_key(path.read_bytes())
    finally:
        os.unlink(tmp_name)
    log.info("jwt_key_created", path=str(path))
    return key


class TokenIssuer:
    def __init__(self, private_key: rsa.RSAPrivateKey, ttl_seconds: int) -> None:
        self._private_key = private_key
        self.ttl_seconds = ttl_seconds
        self.kid = jwk_thumbprint(private_key.public_key())

    def issue(
        self,
        user_id: uuid.UUID,
        role: TokenRole,
        *,
        token_version: int | None = None,
        now: int | None = None,
    ) -> IssuedToken:
        issued_at = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": role,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": issued_at,
            "exp": issued_at + self.ttl_seconds,
        }
        if token_version is not None:
            claims["ver"] = token_version
        token = jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return IssuedToken(access_token=token, expires_in=self.ttl_seconds)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        jwk = public_jwk(self._private_key.public_key())
        return {"keys": [{**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}
