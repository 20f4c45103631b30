"""Settings read once from ``PARCOURS_*`` environment variables (SPEC §1)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "PARCOURS_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_PATH = PROJECT_ROOT / "instance"


def _parse_bool(value: Any) -> bool:
    """Accept the usual spellings of a flag so env vars and mappings agree."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _parse_int_list(value: Any) -> tuple[int, ...]:
    """Parse ``"0,5,300"`` (or a sequence) into a tuple of seconds."""
    if isinstance(value, str):
        return tuple(int(part) for part in value.split(",") if part.strip())
    return tuple(int(part) for part in value)


def _parse_str_list(value: Any) -> tuple[str, ...]:
    """Parse a comma-separated list (or a sequence) into a tuple of strings."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


@dataclass(frozen=True)
class WarehouseConfig:
    """One ``PARCOURS_WAREHOUSE_<NAME>_*`` group (SPEC §15); the URL carries its secrets."""

    name: str
    url: str
    timeout_seconds: float = 300.0
    sync_events: bool = False
    # Engine settings over the dialect's defaults (``engines.ENGINE_SETTINGS``), from
    # ``…_SETTINGS="name=value,name=value"``.
    settings: tuple[tuple[str, str], ...] = ()


# PARCOURS_WAREHOUSE_<NAME>_URL and its companions; <NAME> may contain underscores.
_WAREHOUSE_SETTING = re.compile(
    r"^WAREHOUSE_(?P<name>[A-Za-z0-9_]+?)_(?P<field>URL|TIMEOUT_SECONDS|SYNC_EVENTS|SETTINGS)$")


def _warehouse_env() -> dict[str, str]:
    """The ``PARCOURS_WAREHOUSE_*`` env vars, keyed without the prefix."""
    return {key.removeprefix(ENV_PREFIX): value for key, value in os.environ.items()
            if key.startswith(ENV_PREFIX + "WAREHOUSE_")}


def warehouses_from_env() -> tuple[WarehouseConfig, ...]:
    """The warehouses the environment names (for code running outside an app)."""
    return _warehouses(_warehouse_env())


def _warehouses(settings: Mapping[str, Any]) -> tuple[WarehouseConfig, ...]:
    """Group ``WAREHOUSE_<NAME>_*`` settings by lower-cased name; a name needs a URL."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        match = _WAREHOUSE_SETTING.match(key)
        if match:
            groups.setdefault(match["name"].lower(), {})[match["field"]] = value
    return tuple(
        WarehouseConfig(name=name, url=str(group["URL"]),
                        timeout_seconds=float(group.get("TIMEOUT_SECONDS", 300.0)),
                        sync_events=_parse_bool(group.get("SYNC_EVENTS", False)),
                        settings=setting_pairs(str(group.get("SETTINGS", ""))))
        for name, group in sorted(groups.items()) if group.get("URL"))


def setting_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"a=1, b=x"`` → ``(("a", "1"), ("b", "x"))``; empty items are ignored."""
    items = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(item) != 2 or not item[0].strip() for item in items):
        raise ValueError(f"warehouse settings must read name=value,name=value: {text!r}")
    return tuple((name.strip(), value.strip()) for name, value in items)


@dataclass(frozen=True)
class Config:
    """Every tunable of the service; field names are the env names without the prefix."""

    DATABASE_URL: str = ""
    SECRET_KEY: str = ""
    SCHEDULER: bool = False
    ANALYSIS_INTERVAL_S: int = 300
    WEBHOOK_ALLOW_PRIVATE: bool = False
    WEBHOOK_RETRY_SCHEDULE_S: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000)
    LOG_LEVEL: str = "INFO"
    CORS_ORIGINS: tuple[str, ...] = ()
    DEMO: bool = False
    INSTANCE_PATH: str = str(DEFAULT_INSTANCE_PATH)
    # Extensions composed into the app by name, so `experiments` never imports them.
    EXTENSIONS: tuple[str, ...] = ("webhooks", "admin")
    CONFIG_REFRESH_S: float = 2.0
    RATE_LIMIT_INGEST: str = ""
    RATE_LIMIT_ASSIGN: str = ""
    RATE_LIMIT_STORAGE: str = "memory://"
    LOG_FORMAT: str = "json"
    STATEMENT_TIMEOUT_MS: int = 600_000
    TESTING: bool = False
    WAREHOUSES: tuple[WarehouseConfig, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> Config:
        """Merge defaults, ``PARCOURS_*`` env vars and explicit overrides (highest wins)."""
        raw: dict[str, Any] = {}
        names = {f.name for f in fields(cls)} - {"extra", "WAREHOUSES"}
        for name in names:
            env_value = os.environ.get(ENV_PREFIX + name)
            if env_value is not None:
                raw[name] = env_value
        warehouse_settings = _warehouse_env()
        extra: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key in names:
                raw[key] = value
            elif _WAREHOUSE_SETTING.match(key):
                warehouse_settings[key] = value
            else:
                extra[key] = value
        return cls(**_coerce(raw), WAREHOUSES=_warehouses(warehouse_settings),
                   extra=extra).with_defaults()

    def with_defaults(self) -> Config:
        """Fill the settings whose default depends on the instance folder."""
        instance = Path(self.INSTANCE_PATH)
        url = self.DATABASE_URL or f"sqlite:///{instance / 'parcours.db'}"
        secret = self.SECRET_KEY or _stored_secret_key(instance)
        return replace(self, DATABASE_URL=url, SECRET_KEY=secret)


_PARSERS = {
    "SCHEDULER": _parse_bool,
    "WEBHOOK_ALLOW_PRIVATE": _parse_bool,
    "DEMO": _parse_bool,
    "TESTING": _parse_bool,
    "ANALYSIS_INTERVAL_S": int,
    "STATEMENT_TIMEOUT_MS": int,
    "CONFIG_REFRESH_S": float,
    "WEBHOOK_RETRY_SCHEDULE_S": _parse_int_list,
    "CORS_ORIGINS": _parse_str_list,
    "EXTENSIONS": _parse_str_list,
}


def _coerce(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Turn env strings into the typed values the dataclass declares."""
    return {key: _PARSERS.get(key, str)(value) for key, value in raw.items()}




def _stored_secret_key(instance: Path) -> str:
    """Generate the session secret once and keep it in ``instance/secret_key``."""
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    path.write_text(key)
    path.chmod(0o600)
    return key
