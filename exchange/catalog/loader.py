"""Read every ``*.yaml`` of a config dir, merge, resolve ``${ENV}``, validate.

Every error names the file and the key path it came from, so an operator can fix a
config without reading a traceback: ``buyers.yaml: buyers[acme].campaigns[0].caps.daily``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from exchange.catalog.models import Config
from exchange.catalog.semantics import semantic_errors


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key or '(top)'}: {self.message}"


class ConfigError(Exception):
    """A config dir that cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LIST_SECTIONS = ("publishers", "buyers")
_MAP_SECTIONS = ("settings", "verticals")


@dataclass
class _Merged:
    data: dict[str, Any] = field(default_factory=dict)
    # key path prefix -> file it came from, e.g. ("buyers", 3) -> "buyers.yaml"
    origin: dict[tuple[str | int, ...], str] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)


def read_config_texts(directory: str | Path) -> dict[str, str]:
    """The text of every ``*.yaml`` of a config dir, by file name, in merge order."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError([ConfigIssue(str(root), "", "config directory not found")])
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if not files:
        raise ConfigError([ConfigIssue(str(root), "", "no *.yaml files in the config directory")])
    return {path.name: path.read_text(encoding="utf-8") for path in files}


def load_config(directory: str | Path) -> Config:
    """The validated config of a directory, or ConfigError with every issue in it."""
    return load_config_texts(read_config_texts(directory))


def load_config_texts(texts: Mapping[str, str]) -> Config:
    """The validated config of file texts (name -> YAML), merged in the order given."""
    merged = _Merged(data={"settings": {}, "verticals": {}, "publishers": [], "buyers": []})
    for name, text in texts.items():
        _merge_text(name, text, merged)
    if merged.issues:
        raise ConfigError(merged.issues)
    try:
        config = Config.model_validate(merged.data)
    except ValidationError as exc:
        raise ConfigError([_issue_from(err, merged) for err in exc.errors()]) from None
    problems = [
        ConfigIssue(_file_for(loc, merged), _key_text(loc, merged.data), msg)
        for loc, msg in semantic_errors(config)
    ]
    if problems:
        raise ConfigError(problems)
    return config


def _merge_text(name: str, text: str, merged: _Merged) -> None:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        merged.issues.append(ConfigIssue(name, "", f"not valid YAML: {exc}"))
        return
    if raw is None:
        return
    if not isinstance(raw, dict):
        merged.issues.append(ConfigIssue(name, "", "the top level must be a mapping"))
        return
    raw = _resolve_env(raw, name, [], merged.issues)
    for key, value in raw.items():
        if key in _MAP_SECTIONS:
            if not isinstance(value, dict):
                merged.issues.append(ConfigIssue(name, key, "must be a mapping"))
                continue
            for sub, item in value.items():
                if key == "verticals" and sub in merged.data[key]:
                    merged.issues.append(
                        ConfigIssue(name, f"{key}.{sub}", "defined in more than one file")
                    )
                merged.data[key][sub] = item
                merged.origin[(key, sub)] = name
        elif key in _LIST_SECTIONS:
            if not isinstance(value, list):
                merged.issues.append(ConfigIssue(name, key, "must be a list"))
                continue
            for item in value:
                merged.origin[(key, len(merged.data[key]))] = name
                merged.data[key].append(item)
        else:
            merged.issues.append(ConfigIssue(name, str(key), "unknown section"))


def _resolve_env(value: Any, file: str, path: list[str], issues: list[ConfigIssue]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(v, file, [*path, str(k)], issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, file, [*path, f"[{i}]"], issues) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            found = os.environ.get(m[1], m[2])
            if found is None:
                issues.append(
                    ConfigIssue(file, ".".join(path), f"environment variable {m[1]} is not set")
                )
                return ""
            return found

        return _ENV.sub(sub, value)
    return value


def _file_for(loc: tuple[str | int, ...], merged: _Merged) -> str:
    for n in range(len(loc), 0, -1):
        found = merged.origin.get(tuple(loc[:n]))
        if found:
            return found
    return "(config)"


def _key_text(loc: tuple[str | int, ...], data: Any) -> str:
    """A key path a person can find: list items by their id where they have one."""
    parts: list[str] = []
    node = data
    for step in loc:
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            item = node[step]
            ident = item.get("id") if isinstance(item, dict) else None
            parts.append(f"[{ident}]" if isinstance(ident, str) else f"[{step}]")
            node = item
        else:
            parts.append(("." if parts else "") + str(step))
            node = node.get(step) if isinstance(node, dict) else None
    return "".join(parts)


def _issue_from(err: Any, merged: _Merged) -> ConfigIssue:
    # pydantic adds the name of a failed union branch or a tagged model to loc; drop those.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigIssue(_file_for(loc, merged), _key_text(loc, merged.data), msg)
