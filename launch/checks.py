"""Checks before work: every value of a pipeline recipe, and every stage's `set:` list, validated
against the model of the command that will read it, with the value's origin in the message
(`--set KEY=...`, or FILE:LINE of the recipe).
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from glotta.config import apply_overrides, format_validation_error, parse_override, read_yaml
from glotta.errors import ConfigError


class Origins:
    """Where each key of a recipe came from: a --set override, or a line of the YAML file."""

    def __init__(self, path: Path, sets: list[str] | None):
        self.path = Path(path)
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(self.path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            node = None
        if node is not None:
            self._walk(node, "")
        self.sets = {".".join(parse_override(s)[0]): s for s in sets or []}

    def _walk(self, node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                self.lines[key] = k.start_mark.line + 1
                self._walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.lines[f"{prefix.rstrip('.')}[{i}]"] = v.start_mark.line + 1
                self._walk(v, f"{prefix.rstrip('.')}[{i}].")

    def of(self, key: str) -> str:
        """`--set a.b=...` when an override set the key (or a section above it), else FILE:LINE."""
        parts = key.replace("[", ".[").split(".")
        for n in range(len(parts), 0, -1):
            k = ".".join(parts[:n]).replace(".[", "[")
            if k in self.sets:
                return f"--set {self.sets[k]}"
        for n in range(len(parts), 0, -1):
            k = ".".join(parts[:n]).replace(".[", "[")
            if k in self.lines:
                return f"{self.path}:{self.lines[k]}"
        return str(self.path)


def load_recipe(model: type[BaseModel], path: Path, sets: list[str] | None) -> tuple[Any, Origins]:
    """The recipe as `model`, or one ConfigError listing every bad key with its origin."""
    origins = Origins(path, sets)
    data = apply_overrides(read_yaml(path), sets)
    try:
        return model.model_validate(data), origins
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origins.of)) from None


def check_sets(model: type[BaseModel], items: list[str], where: str, origins: Origins, command: str) -> None:
    """Each `key=value` of a stage's set: list must name a field of `model` and fit its type."""
    problems = []
    for i, item in enumerate(items):
        origin = origins.of(f"{where}[{i}]")
        try:
            path, value = parse_override(item)
            _check_one(model, path, value)
        except (ConfigError, ValidationError) as e:
            msg = str(e) if isinstance(e, ConfigError) else "; ".join(x["msg"] for x in e.errors())
            problems.append(f"{origin}: {where}[{i}] {item!r} ({command}): {msg}")
    if problems:
        raise ConfigError("\n".join(problems))


def _check_one(model: type[BaseModel], path: list[str], value: Any) -> None:
    node: Any = model
    for depth, part in enumerate(path):
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return  # a free-form dict field: the command checks it itself
        if part not in node.model_fields:
            known = ", ".join(sorted(node.model_fields))
            raise ConfigError(f"unknown key '{'.'.join(path[: depth + 1])}'; known here: {known}")
        f = node.model_fields[part]
        if depth == len(path) - 1:
            TypeAdapter(Annotated[f.annotation, *f.metadata] if f.metadata else f.annotation).validate_python(value)
            return
        node = _model_in(f.annotation)


def _model_in(annotation) -> Any:
    """The BaseModel inside `X | None` / Optional[X], else the annotation itself."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
