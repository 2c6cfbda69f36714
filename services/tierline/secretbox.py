"""Encryption at rest for secrets the service must read back (webhook signing secrets).

HMAC signing needs the secret itself, so it cannot be hashed like an API key; it is sealed with
Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) instead. `TIERLINE_SECRET_KEY` holds a
keyring: one or more Fernet keys separated by commas, newest first. The first key seals, any key
opens, so rotating is: put a new key first, run `tierline secrets rotate` (re-seals every row
under it), then drop the old key. See docs/adr/0007-secrets-at-rest.md.

The composition root installs the process's box once (`install`); the store layer seals and
opens through `current()` unless a caller passes a box explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

SETTING = "TIERLINE_SECRET_KEY"


class SecretKeyError(OSError):
    """The key setting is missing or malformed.

    An OSError like an unreachable database: a configuration the process cannot work with, which
    the command line reports in one line. The message never contains key material.
    """


class SecretUnreadable(Exception):
    """A sealed value does not open under any key of the keyring (a dropped key, or damage)."""


def generate_key() -> str:
    """A fresh key in the format the setting takes."""
    return Fernet.generate_key().decode()


def parse_keys(value: str) -> list[str]:
    """The keys of a setting value: comma-separated, surrounding spaces ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]


class SecretBox:
    """Seals text under the first key of a keyring and opens what any of its keys sealed."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretKeyError(f"{SETTING} holds no key")
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise SecretKeyError(
                    f"{SETTING}: key {number} of {len(keys)} is not a Fernet key "
                    "(32 bytes, url-safe base64); make one with `tierline secrets new-key`"
                ) from None
        self._keyring = MultiFernet(fernets)
        self._size = len(fernets)

    @classmethod
    def from_setting(cls, value: SecretStr | str | None) -> SecretBox:
        """The box for a setting value; SecretKeyError when it is unset or malformed."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or not raw.strip():
            raise SecretKeyError(
                f"{SETTING} is not set; it encrypts webhook secrets at rest "
                "(make one with `tierline secrets new-key`)"
            )
        return cls(parse_keys(raw))

    def __repr__(self) -> str:
        return f"SecretBox(keys={self._size})"

    def seal(self, plaintext: str) -> str:
        """The text encrypted under the newest key (an ASCII token, fresh IV each time)."""
        return self._keyring.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        """The text inside a token sealed under any key of the keyring."""
        try:
            return self._keyring.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("no key of the keyring opens this value") from None

    def reseal(self, sealed: str) -> str:
        """The same text sealed again under the newest key."""
        try:
            return self._keyring.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("no key of the keyring opens this value") from None


_installed: SecretBox | None = None


def install(box: SecretBox | None) -> None:
    """Make `box` the process's box (None removes it)."""
    global _installed
    _installed = box


def current() -> SecretBox:
    """The process's box; SecretKeyError when the composition root installed none."""
    if _installed is None:
        raise SecretKeyError(f"no {SETTING} is configured in this process")
    return _installed
