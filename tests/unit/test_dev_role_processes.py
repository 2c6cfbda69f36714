"""The dev stack's role processes get exactly the dev process's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import SecretStr

from tierline.config import Settings
from tierline.devstack.role_processes import settings_env


def _changed(name: str, value: Any) -> Any:
    """A valid value of the field's type that differs from `value` (its default)."""
    annotation = Settings.model_fields[name].annotation
    choices = [c for c in get_args(annotation) if isinstance(c, str)]
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, list):
        return [1.5, 30.0, 600.0]
    if isinstance(value, Path):
        return Path("/tmp/elsewhere")
    if isinstance(value, str):
        return value + "-x" if "://" not in value else value.replace("5432", "6543")
    if name == "secret_key":
        return SecretStr("k1,k2")
    if name in {"kafka_min_insync_replicas", "replay_workers"}:
        return 3
    if value is None:
        return "https://tierline.example" if name == "public_base_url" else "tl_x"
    raise AssertionError(f"no changed value for {name} ({annotation})")


def _dump(settings: Settings) -> dict[str, Any]:
    out = settings.model_dump()
    out["secret_key"] = settings.secret_key and settings.secret_key.get_secret_value()
    return out


def test_every_setting_round_trips_through_the_child_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    changed = defaults.model_copy(
        update={name: _changed(name, getattr(defaults, name)) for name in Settings.model_fields}
    )
    kept = [k for k, v in _dump(defaults).items() if _dump(changed)[k] == v]
    assert not kept, f"fields left at their default: {kept}"
    env = settings_env(changed, {"PATH": "/bin", "TIERLINE_API_PORT": "1"})
    for name in list(os.environ):
        if name.startswith("TIERLINE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _dump(Settings()) == _dump(changed)
    assert env["PATH"] == "/bin"


def test_unset_settings_are_left_out_and_stale_variables_dropped() -> None:
    settings = Settings(secret_key=None, bootstrap_admin_key=None)
    env = settings_env(settings, {"TIERLINE_SECRET_KEY": "stale", "HOME": "/root"})
    assert "TIERLINE_SECRET_KEY" not in env and "TIERLINE_BOOTSTRAP_ADMIN_KEY" not in env
    assert env["HOME"] == "/root"
