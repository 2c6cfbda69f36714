"""Board sessions: an encrypted cookie (aiohttp-session), the signed-in key, and CSRF tokens.

The cookie is sealed with a Fernet key derived (HKDF) from the first of `TIERLINE_SECRET_KEY`,
so every API process opens the sessions of the others; after a key rotation people sign in
again. It holds the SHA-256 hash of the API key (never the key), so a revoked key
ends its sessions at once, and a random CSRF token.

CSRF uses the synchronizer-token pattern: a random per-session token (`secrets`) sent with every
form and compared in constant time (`hmac.compare_digest`); the cookie is also
`SameSite=Strict`. aiohttp-csrf was not used: it replaces the token on every request, so a
second tab's forms stop working, which is how people use this board. WTForms' SessionCSRF was
not used either: it compares tokens with `!=` and fails on a session without a token.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import warnings

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import Session, get_session, new_session
from aiohttp_session import session_middleware as _session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierline import secretbox
from tierline.config import Settings
from tierline.service_layer.issues import Principal
from tierline.store.api_keys import hash_key

# aiohttp-session stores the session under a plain string request key; aiohttp warns about
# that once per process, which says nothing to an operator.
warnings.filterwarnings("ignore", category=NotAppKeyWarning, module="aiohttp_session")

COOKIE = "tierline_board"
CSRF_FIELD = "csrf_token"
_KEY_HASH = "key_hash"
_CSRF = "csrf"
_FLASH = "flash"
# The key a request's session signed in with (set by the board's guard).
BOARD_PRINCIPAL = web.RequestKey("board_principal", Principal)


def _derived(key: bytes) -> Fernet:
    """A session key of its own for each secret key: the secrets-at-rest key is not reused."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tierline board session")
    return Fernet(base64.urlsafe_b64encode(hkdf.derive(key)))


def session_key(settings: Settings) -> Fernet:
    """The cookie's Fernet key: derived from TIERLINE_SECRET_KEY, else one per process."""
    configured = settings.secret_key.get_secret_value() if settings.secret_key else ""
    keys = secretbox.parse_keys(configured)
    if not keys:
        # No secret configured (only unit tests build such an app; `tierline api` refuses):
        # sessions then last as long as this process.
        return Fernet(Fernet.generate_key())
    return _derived(keys[0].encode())


def session_middleware(settings: Settings) -> Middleware:
    """aiohttp-session's middleware with the board's cookie (HttpOnly, SameSite=Strict)."""
    storage = EncryptedCookieStorage(
        session_key(settings),
        cookie_name=COOKIE,
        max_age=settings.board_session_seconds,
        path="/board/",
        httponly=True,
        samesite="Strict",
        secure=(settings.public_base_url or "").startswith("https://"),
    )
    return _session_middleware(storage)


async def signed_in_key_hash(request: web.Request) -> bytes | None:
    """The hash of the API key this browser signed in with, if any."""
    session = await get_session(request)
    value = session.get(_KEY_HASH)
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


async def sign_in(request: web.Request, api_key: str) -> None:
    """A fresh session (new id and CSRF token: no fixation) for this key."""
    session = await new_session(request)
    session[_KEY_HASH] = hash_key(api_key).hex()
    session[_CSRF] = secrets.token_urlsafe(32)


async def sign_out(request: web.Request) -> None:
    """Forget the session; the cookie is cleared in the response."""
    session = await get_session(request)
    session.invalidate()


async def csrf_token(request: web.Request) -> str:
    """This session's CSRF token (made on first use, e.g. by the sign-in form)."""
    session = await get_session(request)
    token = session.get(_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[_CSRF] = token
    return token


async def csrf_valid(request: web.Request, sent: str | None) -> bool:
    """Whether a form carried this session's token."""
    session = await get_session(request)
    token = session.get(_CSRF)
    if not isinstance(token, str) or not sent:
        return False
    return hmac.compare_digest(token.encode(), sent.encode("utf-8", "replace"))


async def flash(request: web.Request, message: str) -> None:
    """A message shown once, on the next page (after a redirect)."""
    session = await get_session(request)
    session[_FLASH] = message[:300]


async def take_flash(request: web.Request) -> str | None:
    """The pending message, removed from the session."""
    session: Session = await get_session(request)
    message = session.pop(_FLASH, None)
    return message if isinstance(message, str) else None
