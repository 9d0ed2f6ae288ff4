"""Ansible-style inventories: the list of boards a device lab already keeps.

Both inventory formats Ansible reads are understood: INI (`[group]` host lines with
`key=value` variables, `[group:vars]`, `[group:children]`) and YAML (`all: children: ...`).
Of the variables only the connection ones are used: `ansible_host`, `ansible_user`,
`ansible_port`, `ansible_ssh_private_key_file` and `ansible_python_interpreter`; a lab's
other variables are left alone. Names and values are untrusted: every host is checked like
a profile's [connection] before it is used, and nothing here ever reaches a shell.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONNECTION_VARS = {
    "ansible_host": "host",
    "ansible_user": "user",
    "ansible_port": "port",
    "ansible_ssh_private_key_file": "identity",
    "ansible_python_interpreter": "python",
}


@dataclass
class InventoryGroup:
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    """Groups by name and each host's own variables."""

    path: Path
    groups: dict[str, InventoryGroup] = field(default_factory=dict)
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, name: str) -> InventoryGroup:
        return self.groups.setdefault(name, InventoryGroup())

    def add_host(self, group: str, host: str, variables: dict[str, Any]) -> None:
        if not NAME.match(host):
            raise ConfigError(f"inventory {self.path}: host name {host!r} is not a plain name "
                              "(letters, digits, '.', '_', '-'; ranges like web[01:09] are not supported)")
        if host not in self.group(group).hosts:
            self.group(group).hosts.append(host)
        self.host_vars.setdefault(host, {}).update(variables)

    def members(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """The hosts of a group (children included, each once) with their connection variables."""
        if name not in self.groups:
            from .config import _did_you_mean

            known = sorted(g for g in self.groups if g != "ungrouped")
            raise ConfigError(f"inventory {self.path}: no group {name!r}{_did_you_mean(name, known)}; "
                              f"groups: {', '.join(known) or '(none)'}")
        found: dict[str, dict[str, Any]] = {}
        self._collect(name, dict(self.groups.get("all", InventoryGroup()).vars), found, [])
        return list(found.items())

    def _collect(self, name: str, inherited: dict[str, Any], found: dict[str, dict[str, Any]],
                 path: list[str]) -> None:
        if name in path:
            raise ConfigError(f"inventory {self.path}: group {name!r} contains itself "
                              f"({' -> '.join([*path, name])})")
        group = self.groups.get(name)
        if group is None:
            raise ConfigError(f"inventory {self.path}: group {path[-1]!r} lists unknown child group {name!r}")
        variables = {**inherited, **group.vars}
        for host in group.hosts:
            if host not in found:
                found[host] = {**variables, **self.host_vars.get(host, {})}
        for child in group.children:
            self._collect(child, variables, found, [*path, name])


def load_inventory(path: Path) -> Inventory:
    """An inventory file, INI or YAML (by content: YAML when its first word ends with ':')."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"inventory {path}: cannot read it: {e}") from e
    first = next((line.strip() for line in text.splitlines() if line.strip() and line.strip()[0] not in "#;"), "")
    inventory = Inventory(Path(path))
    if first.startswith("---") or (first.endswith(":") and not first.startswith("[")) or first.startswith("all:"):
        _read_yaml(inventory, text)
    else:
        _read_ini(inventory, text)
    return inventory


def _read_ini(inventory: Inventory, text: str) -> None:
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if not NAME.match(section) or kind not in ("hosts", "vars", "children"):
                raise ConfigError(f"inventory {inventory.path} line {number}: unknown section {line!r} "
                                  "(use [group], [group:vars] or [group:children])")
            inventory.group(section)
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise ConfigError(f"inventory {inventory.path} line {number}: {e}") from e
        if kind == "children":
            inventory.group(section).children.append(words[0])
        elif kind == "vars":
            key, _, value = line.partition("=")
            inventory.group(section).vars[key.strip()] = value.strip().strip("'\"")
        else:
            inventory.add_host(section, words[0], _ini_vars(inventory, number, words[1:]))


def _ini_vars(inventory: Inventory, number: int, words: list[str]) -> dict[str, str]:
    variables = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError(f"inventory {inventory.path} line {number}: expected key=value after the "
                              f"host name, got {word!r}")
        variables[key] = value
    return variables


def _read_yaml(inventory: Inventory, text: str) -> None:
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"inventory {inventory.path}: not valid YAML: {e}") from e
    if not isinstance(document, dict):
        raise ConfigError(f"inventory {inventory.path}: expected groups at the top (all: children: ...)")
    for name, body in document.items():
        _yaml_group(inventory, str(name), body)


def _yaml_group(inventory: Inventory, name: str, body: Any) -> None:
    if not NAME.match(name):
        raise ConfigError(f"inventory {inventory.path}: group name {name!r} is not a plain name")
    body = body or {}
    if not isinstance(body, dict):
        raise ConfigError(f"inventory {inventory.path}: group {name!r} must be a mapping "
                          "(hosts:, vars:, children:)")
    group = inventory.group(name)
    group.vars.update(body.get("vars") or {})
    for host, variables in (body.get("hosts") or {}).items():
        inventory.add_host(name, str(host), dict(variables or {}))
    for child, child_body in (body.get("children") or {}).items():
        group.children.append(str(child))
        _yaml_group(inventory, str(child), child_body)


def connection_values(variables: dict[str, Any]) -> dict[str, Any]:
    """The profile [connection] keys an inventory host sets (validated by the caller)."""
    values: dict[str, Any] = {}
    for key, target in CONNECTION_VARS.items():
        if key in variables:
            value = variables[key]
            values[target] = int(value) if target == "port" and str(value).isdigit() else value
    return values
