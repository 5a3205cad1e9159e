"""The exception types for mistakes a user can fix (bad config value, missing file, bad
argument): the CLI prints them as ``error: <message>`` with exit status 2, no traceback.

:func:`require` and :func:`require_choice` are the config groups' checks, so every refused
value reads the same: ``<dotted key> must be <rule>, got <value>``.
"""

from __future__ import annotations

from collections.abc import Collection


class UserError(ValueError):
    """A mistake in the user's input; its message names the key, file or line to fix."""


class ConfigError(UserError):
    """A config file or override that does not fit the schema: an unknown key, a wrong type, a
    value outside its choices or range; the message names the dotted key."""


def require(ok: bool, key: str, rule: str, value: object) -> None:
    """Raise :class:`ConfigError` ``"<key> must be <rule>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def require_choice(key: str, value: object, choices: Collection[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (named in the message)."""
    require(value in choices, key, f"one of {', '.join(map(str, choices))}", value)
