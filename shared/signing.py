"""Signed, expiring links (the evidence page links that CDS cards carry).

A link is the path plus ``exp`` (Unix seconds) and ``sig`` = HMAC-SHA256 over ``path|exp``
(URL-safe base64, unpadded). Verification is constant-time and refuses expired links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from urllib.parse import urlencode


class LinkSigner:
    def __init__(self, secret: bytes | str | None = None) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else secret

    def _sig(self, path: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{path}|{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, path: str, *, now: datetime, ttl: timedelta) -> str:
        """``path?exp=…&sig=…``, valid for ``ttl`` from ``now``."""
        exp = int((now + ttl).timestamp())
        return f"{path}?{urlencode({'exp': exp, 'sig': self._sig(path, exp)})}"

    def verify(self, path: str, exp: str | None, sig: str | None, *, now: datetime) -> bool:
        if not exp or not sig or not exp.isdigit():
            return False
        if int(exp) < now.timestamp():
            return False
        return hmac.compare_digest(self._sig(path, int(exp)), sig)
