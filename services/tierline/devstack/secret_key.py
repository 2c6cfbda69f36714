"""The dev stack's TIERLINE_SECRET_KEY: made once, kept in the data directory (mode 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog
from pydantic import SecretStr

from tierline.config import Settings
from tierline.secretbox import SecretBox, generate_key

log = structlog.get_logger(__name__)

KEY_FILE = "secret.key"


def dev_secret_key(settings: Settings, data_dir: Path) -> SecretStr:
    """The key from the environment if set, else DATA_DIR/secret.key (created on first start).

    The data directory's webhook secrets are sealed with this key, so the file lives with them
    and is only readable by its owner.
    """
    if settings.secret_key is not None:
        return settings.secret_key
    path = data_dir / KEY_FILE
    try:
        # O_EXCL: two starts racing on a fresh directory must not write two different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "w") as out:
        out.write(generate_key() + "\n")
    log.info("dev_secret_key_created", path=str(path))
    return _read_key(path)


def _read_key(path: Path) -> SecretStr:
    """The key in the file, checked; permissions wider than the owner's are narrowed."""
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
        log.warning("dev_secret_key_permissions_narrowed", path=str(path), mode="0600")
    key = SecretStr(path.read_text().strip())
    SecretBox.from_setting(key)  # a damaged file fails here, in one line, not at first use
    return key
