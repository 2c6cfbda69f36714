"""The codec for secrets at rest: Fernet under a keyring, newest key first."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from tierline.config import Settings
from tierline.devstack.secret_key import dev_secret_key
from tierline.secretbox import (
    SecretBox,
    SecretKeyError,
    SecretUnreadable,
    generate_key,
    parse_keys,
)
from tierline.webhooks.signing import new_secret

OLD, NEW, OTHER = generate_key(), generate_key(), generate_key()


def test_sealed_value_opens_and_hides_the_secret() -> None:
    box = SecretBox([NEW])
    secret = new_secret()
    sealed = box.seal(secret)
    assert secret not in sealed and "whsec_" not in sealed
    assert box.open(sealed) == secret
    assert box.seal(secret) != sealed, "a fresh IV each time"


def test_rotation_old_key_opens_new_key_seals() -> None:
    secret = new_secret()
    sealed_old = SecretBox([OLD]).seal(secret)
    rotated = SecretBox.from_setting(f"{NEW}, {OLD}")
    # Any key of the keyring opens.
    assert rotated.open(sealed_old) == secret
    # The first key seals: the new key alone opens what the rotated box seals...
    assert SecretBox([NEW]).open(rotated.seal(secret)) == secret
    with pytest.raises(SecretUnreadable):
        SecretBox([OLD]).open(rotated.seal(secret))
    # ...and re-sealing moves an old value under the new key, so the old key can go.
    resealed = rotated.reseal(sealed_old)
    assert SecretBox([NEW]).open(resealed) == secret
    with pytest.raises(SecretUnreadable):
        SecretBox([OLD]).open(resealed)


def test_a_value_no_key_opens_is_unreadable() -> None:
    sealed = SecretBox([OTHER]).seal(new_secret())
    with pytest.raises(SecretUnreadable):
        SecretBox([NEW, OLD]).open(sealed)
    with pytest.raises(SecretUnreadable):
        SecretBox([NEW]).reseal(sealed)
    with pytest.raises(SecretUnreadable):
        SecretBox([NEW]).open("not a token")


@pytest.mark.parametrize("value", [None, "", "  ", SecretStr(""), ","])
def test_missing_key_is_a_one_line_error(value: SecretStr | str | None) -> None:
    with pytest.raises(SecretKeyError) as caught:
        SecretBox.from_setting(value)
    message = str(caught.value)
    assert "TIERLINE_SECRET_KEY" in message and "\n" not in message


def test_malformed_key_is_named_by_position_never_shown() -> None:
    bad = "this-is-not-a-fernet-key-but-could-be-a-password"
    with pytest.raises(SecretKeyError, match="key 2 of 2 is not a Fernet key") as caught:
        SecretBox.from_setting(f"{NEW},{bad}")
    assert bad not in str(caught.value) and NEW not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_keys_never_show_in_reprs() -> None:
    box = SecretBox.from_setting(SecretStr(f"{NEW},{OLD}"))
    assert repr(box) == "SecretBox(keys=2)"
    settings = Settings(secret_key=f"{NEW},{OLD}")
    assert NEW not in repr(settings) and NEW not in str(settings.model_dump())
    assert parse_keys(f" {NEW} ,{OLD},, ") == [NEW, OLD]


def test_dev_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(secret_key=None)
    first = dev_secret_key(settings, tmp_path)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.get_secret_value()
    SecretBox.from_setting(first).open(SecretBox.from_setting(first).seal("x"))
    assert dev_secret_key(settings, tmp_path) == first, "kept across restarts"


def test_dev_key_file_with_loose_permissions_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text(NEW + "\n")
    path.chmod(0o644)
    assert dev_secret_key(Settings(secret_key=None), tmp_path).get_secret_value() == NEW
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_dev_uses_the_environment_key_when_set(tmp_path: Path) -> None:
    key = dev_secret_key(Settings(secret_key=OLD), tmp_path)
    assert key.get_secret_value() == OLD
    assert not (tmp_path / "secret.key").exists()


def test_damaged_dev_key_file_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("garbage\n")
    with pytest.raises(SecretKeyError, match="key 1 of 1 is not a Fernet key"):
        dev_secret_key(Settings(secret_key=None), tmp_path)
