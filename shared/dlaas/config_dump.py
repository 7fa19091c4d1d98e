"""The configuration a process would run with, safe to print: secrets and URL passwords masked."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_settings import BaseSettings

MASK = "**********"


def mask_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL masked.

    Anything that is not such a URL comes back unchanged.
    """
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))


def _secret(value: SecretStr | SecretBytes) -> str:
    raw = value.get_secret_value()
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    masked = mask_url(text)
    # a URL keeps its shape (scheme, user, host tell an operator a lot); anything else is hidden
    return masked if masked != text else MASK


def _plain(value: object) -> object:
    if isinstance(value, BaseModel):
        value = {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return _scalar(value.value if isinstance(value, Enum) else value)


def _scalar(value: object) -> object:
    if isinstance(value, SecretStr | SecretBytes):
        return _secret(value)
    if isinstance(value, str):
        return mask_url(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)  # paths and anything else with a text form


def effective_config(settings: BaseSettings) -> dict[str, Any]:
    """Every setting of ``settings`` (as read from the environment), JSON-ready, secrets masked.

    ``SecretStr`` values are masked whole, except URLs, which keep everything but the password;
    a password in a plain string URL (``DLAAS_STAGER__DB_URL``) is masked too.
    """
    return {name: _plain(getattr(settings, name)) for name in type(settings).model_fields}


_SETTINGS = {
    "client": "dlaas.client.api:ClientSettings",
    "stager": "dlaas_stager.settings:StagerSettings",
    "cache-router": "dlaas_cache_router.settings:CacheRouterSettings",
    "fuse-agent": "dlaas_fuse_agent.settings:FuseAgentSettings",
    "notifier": "dlaas.settings:ServiceSettings",
}


def settings_class(name: str) -> type[BaseSettings]:
    """The settings class of a part of dlaas by name (the service must be installed)."""
    module, _, attribute = _SETTINGS[name].partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not (isinstance(found, type) and issubclass(found, BaseSettings)):
        raise TypeError(f"{_SETTINGS[name]} is not a settings class")
    return found
