"""Opaque identifiers: global ``Node`` ids and pagination cursors.

Both are URL-safe base64 of a small, flat JSON array, so they round-trip any upstream id
(colons, slashes, unicode) without ambiguity. Anything that does not decode to the expected shape
is ``BAD_USER_INPUT``; the values inside are validated again where they are used.

Organization cursors carry the upstream's next-page URL, which the gateway will fetch with the
tenant's credentials, so they are signed: an HMAC-SHA256 tag over the tenant's name and the
payload (``CursorSigner``). A forged or altered cursor, or one handed out to another tenant, is
refused before any upstream call. Node ids and subscription cursors name nothing the gateway
would fetch unchecked, so they stay unsigned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ErrorCode, GatewayError
from providers.base import ProviderName

__all__ = [
    "CursorSigner",
    "NodeRef",
    "OrganizationCursor",
    "decode_index_cursor",
    "decode_node_id",
    "encode_index_cursor",
    "encode_node_id",
]

_MAX_OPAQUE = 4096  # longer than any id or cursor we hand out; refuse before decoding


def _encode(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unbase64(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value or len(value) > _MAX_OPAQUE:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text, lone surrogates included
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}") from None


def _parts(raw: bytes, what: str) -> list[Any]:
    """A flat, non-empty JSON array of scalars. orjson refuses lone surrogates and nesting past
    its depth limit with a JSONDecodeError (the stdlib would raise RecursionError)."""
    try:
        parts = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}") from None
    if (
        not isinstance(parts, list)
        or not parts
        or not all(p is None or isinstance(p, (str, int)) for p in parts)
    ):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}")
    return parts


def _decode(value: str, what: str) -> list[Any]:
    return _parts(_unbase64(value, what), what)


def _provider(value: Any, what: str) -> ProviderName:
    try:
        return ProviderName(value)
    except ValueError:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}") from None


@dataclass(frozen=True, slots=True)
class NodeRef:
    type_name: str  # "Organization" | "Subscription"
    provider: ProviderName
    organization_id: str
    subscription_id: str | None = None


def encode_node_id(ref: NodeRef) -> str:
    parts: list[Any] = [ref.type_name, ref.provider.value, ref.organization_id]
    if ref.subscription_id is not None:
        parts.append(ref.subscription_id)
    return _encode(parts)


def decode_node_id(value: str) -> NodeRef:
    parts = _decode(value, "node id")
    kind = parts[0]
    ok_org = kind == "Organization" and len(parts) == 3
    ok_sub = kind == "Subscription" and len(parts) == 4
    if not (ok_org or ok_sub) or not all(isinstance(p, str) and p for p in parts):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid node id")
    return NodeRef(kind, _provider(parts[1], "node id"), parts[2], parts[3] if ok_sub else None)


@dataclass(frozen=True, slots=True)
class OrganizationCursor:
    """Position of one organization in the merged list: the provider, the upstream page it is
    on (the adapter cursor that fetches that page, ``None`` for the first) and its index there."""

    provider: ProviderName
    page_cursor: str | None
    index: int


_TAG_BYTES = 16  # 128-bit tags: forging one is out of reach, and cursors stay short


class CursorSigner:
    """Signs and checks organization cursors with a server secret (``[server] cursor_secret``;
    ``None`` draws a random one, so cursors then last as long as the process)."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | None = None) -> None:
        material = secret.encode() if secret is not None else secrets.token_bytes(32)
        # Derived, so the configured secret itself is never used as a MAC key elsewhere.
        self._key = hmac.new(material, b"orggraph cursor v1", hashlib.sha256).digest()

    def _tag(self, tenant: str, payload: bytes) -> bytes:
        message = tenant.encode() + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode_organization_cursor(self, tenant: str, cursor: OrganizationCursor) -> str:
        payload = json.dumps(
            ["o", cursor.provider.value, cursor.page_cursor, cursor.index],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        return base64.urlsafe_b64encode(self._tag(tenant, payload) + payload).rstrip(b"=").decode()

    def decode_organization_cursor(self, tenant: str, value: str) -> OrganizationCursor:
        raw = _unbase64(value, "cursor")
        tag, payload = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(tenant, payload)):
            raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid cursor")
        parts = _parts(payload, "cursor")
        if (
            len(parts) != 4
            or parts[0] != "o"
            or not (parts[2] is None or isinstance(parts[2], str))
            or not isinstance(parts[3], int)
            or isinstance(parts[3], bool)
            or parts[3] < 0
        ):
            raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid cursor")
        return OrganizationCursor(_provider(parts[1], "cursor"), parts[2], parts[3])


def encode_index_cursor(kind: str, index: int) -> str:
    return _encode([kind, index])


def decode_index_cursor(kind: str, value: str) -> int:
    parts = _decode(value, "cursor")
    if (
        len(parts) != 2
        or parts[0] != kind
        or not isinstance(parts[1], int)
        or isinstance(parts[1], bool)
        or parts[1] < 0
    ):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid cursor")
    return int(parts[1])
