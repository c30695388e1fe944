"""YAML + pydantic configs with `--set dotted.key=value` overrides.

Each stage defines its own pydantic model next to the code that uses it; this module only
loads YAML, applies overrides and turns validation errors into one readable ConfigError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from glotta.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is parsed as YAML so lists and numbers work."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def validation_key(loc: tuple) -> str:
    """A pydantic error location as a user writes the key: `data.train[0]` (`<root>`: the whole value)."""
    return ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc).replace(".[", "[") or "<root>"


def format_validation_error(err: ValidationError, where: str | Callable[[str], str] = "config") -> str:
    """One line per error, each starting with where the value came from. `where`: one source for
    every key (a file, "config"; a missing key then gets the hint how to give it), or a function
    key -> origin naming each key's own (a recipe: `--set ...` or FILE:LINE, launch/checks.py)."""
    origin = where if callable(where) else (lambda key: where)
    lines = []
    for e in err.errors():
        key = validation_key(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin(key)}: unknown key '{key}'")
        elif e["type"] == "missing":
            hint = "" if callable(where) else f" (give it in the YAML, as an option, or with --set {key}=...)"
            lines.append(f"{origin(key)}: '{key}' is required{hint}")
        else:
            lines.append(f"{origin(key)}: {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    section: str | None = None,
) -> M:
    """Build `model` from (base dict) <- YAML file [section] <- --set overrides, or raise ConfigError."""
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        raw = read_yaml(path)
        if section is not None:
            raw = raw.get(section, {}) or {}
        data.update(raw)
        source = str(path)
    apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
