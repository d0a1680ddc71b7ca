"""Encryption of workflow payloads (AES-GCM) so that Temporal's history holds no personal data.

Payloads carry emails, user ids and order contents. With `ORDERSAGA_PAYLOAD_KEYS` set, every
payload the SDK writes is encrypted before it leaves the process, and its metadata names the key
that sealed it. Decoding looks the key up by that id, so after a rotation (new key first in the
list) histories written under an older key keep decoding while that key stays listed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12


class CodecSettings(BaseSettings):
    """`ORDERSAGA_PAYLOAD_KEYS`: `kid:base64key[,kid:base64key...]`, the first one encrypts; empty = off."""

    model_config = SettingsConfigDict(env_prefix="ORDERSAGA_", extra="ignore")

    payload_keys: str = Field(default="", description="AES keys (16, 24 or 32 bytes) by key id.")

    def keys(self) -> list[tuple[str, bytes]]:
        return parse_keys(self.payload_keys)


def parse_keys(spec: str) -> list[tuple[str, bytes]]:
    keys: list[tuple[str, bytes]] = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, encoded = entry.partition(":")
        if not sep or not kid:
            raise ValueError("each payload key is written kid:base64key")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"payload key {kid!r} is not valid base64") from exc
        if len(key) not in (16, 24, 32):
            raise ValueError(f"payload key {kid!r} must be 16, 24 or 32 bytes, not {len(key)}")
        if any(kid == seen for seen, _ in keys):
            raise ValueError(f"payload key id {kid!r} is listed twice")
        keys.append((kid, key))
    return keys


def new_key_spec(kid: str) -> str:
    """A fresh `kid:base64key` entry (AES-256), for operators and tests."""
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("the encryption codec needs at least one key")
        self.current_kid = keys[0][0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.current_kid]
        kid = self.current_kid.encode()
        encoded: list[Payload] = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            # The key id is authenticated data: a payload relabelled with another id does not decrypt.
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), kid)
            encoded.append(
                Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: kid}, data=nonce + sealed)
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded: list[Payload] = []
        for payload in payloads:
            # Histories written before the codec was turned on stay readable.
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            kid = payload.metadata.get(KEY_ID_METADATA, b"")
            cipher = self._ciphers.get(kid.decode())
            if cipher is None:
                raise ValueError(f"no payload key with id {kid.decode()!r} is configured")
            data = payload.data
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], kid)
            original = Payload()
            original.ParseFromString(plain)
            decoded.append(original)
        return decoded


def payload_codec(settings: CodecSettings | None = None) -> EncryptionCodec | None:
    keys = (settings or CodecSettings()).keys()
    return EncryptionCodec(keys) if keys else None


def data_converter(settings: CodecSettings | None = None) -> DataConverter:
    """The SDK's default converter, plus the encryption codec when keys are configured."""
    codec = payload_codec(settings)
    if codec is None:
        return DataConverter.default
    return dataclasses.replace(DataConverter.default, payload_codec=codec)
