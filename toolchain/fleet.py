"""Fleets: a target that is a group of boards, measured in parallel, reported per device and as a group.

A fleet profile (`connection.kind = "fleet"`) lists its devices, or names a group of an
Ansible-style inventory (inventory.py). It expands to one SSH profile per device, named
`<fleet>.<device>`, sharing the profile's [connection] settings, runtime, hardware, bench
settings and budgets. Devices run in parallel (each holds its own lease, leases.py); one that
fails (unreachable, broken) fails only its own rows, and the others still report.

The group row per artifact x threads: the median of the devices' p50, their spread
((max - min) / median) and the devices that are outliers: p50 more than `outlier_ratio`
times the median (or less than 1/ratio of it), or throttled. A slow board in a lab is
usually throttling, on the wrong CPU governor or busy with something else.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .config import ConnectionSection, TargetProfile, format_validation_error
from .errors import ConfigError

GROUP_COLUMNS = (
    ("artifact", "artifact"), ("fleet", "fleet"), ("threads", "threads"), ("devices", "devices"),
    ("median_p50", "median p50 ms"), ("spread", "spread"), ("outliers", "outliers"), ("failed", "failed"),
)


@dataclass
class FleetDevices:
    """The device profiles of one fleet target, in inventory order."""

    fleet: TargetProfile
    devices: list[TargetProfile]


def is_fleet(profile: TargetProfile) -> bool:
    return profile.connection.kind == "fleet"


def expand_fleet(profile: TargetProfile) -> FleetDevices:
    """One SSH profile per device of the fleet; a device's own keys override the shared [connection]."""
    assert profile.fleet is not None
    shared = profile.connection.model_dump(exclude={"kind"}, exclude_none=True)
    entries = [(d.name, d.model_dump(exclude={"name"}, exclude_none=True)) for d in profile.fleet.devices]
    if profile.fleet.inventory is not None:
        entries += _inventory_entries(profile)
    seen: set[str] = set()
    devices = []
    for name, values in entries:
        if name in seen:
            raise ConfigError(f"target profile '{profile.name}': device {name!r} is listed twice; "
                              "give each board one entry")
        seen.add(name)
        devices.append(_device_profile(profile, name, {**shared, **values}))
    if not devices:
        raise ConfigError(f"target profile '{profile.name}': the fleet has no devices")
    return FleetDevices(profile, devices)


def _inventory_entries(profile: TargetProfile) -> list[tuple[str, dict[str, Any]]]:
    from .inventory import connection_values, load_inventory

    inventory = load_inventory(profile.fleet.inventory)
    entries = []
    for host, variables in inventory.members(profile.fleet.group or profile.name):
        values = connection_values(variables)
        values.setdefault("host", host)
        if "identity" in values:
            values["identity"] = str(_relative_to(profile.fleet.inventory.parent, values["identity"]))
        entries.append((host, values))
    return entries


def _relative_to(base: Any, value: str) -> Any:
    from pathlib import Path

    return (base / Path(value).expanduser()).resolve()


def _device_profile(profile: TargetProfile, device: str, values: dict[str, Any]) -> TargetProfile:
    try:
        connection = ConnectionSection.model_validate({**values, "kind": "ssh"})
    except ValidationError as e:
        raise ConfigError(f"target profile '{profile.name}', device {device!r}: "
                          f"{format_validation_error(e, ConnectionSection)}") from e
    name = f"{profile.name}.{device}"
    return profile.model_copy(update={"name": name, "connection": connection, "fleet": None}, deep=True)


def expand_targets(profiles: list[TargetProfile]) -> tuple[list[TargetProfile], dict[str, str]]:
    """Fleets replaced by their devices; and device profile name -> fleet name."""
    expanded: list[TargetProfile] = []
    fleet_of: dict[str, str] = {}
    for profile in profiles:
        if not is_fleet(profile):
            expanded.append(profile)
            continue
        for device in expand_fleet(profile).devices:
            expanded.append(device)
            fleet_of[device.name] = profile.name
    return expanded, fleet_of


def group_rows(results: list[dict[str, Any]], fleet_of: dict[str, str], failed: dict[str, str],
               ratios: dict[str, float]) -> list[dict[str, Any]]:
    """One row per fleet x artifact x threads: median p50, spread, outlier and failed devices."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in results:
        fleet = fleet_of.get(record["target"])
        if fleet is not None:
            groups.setdefault((fleet, record["artifact"], record["threads"]), []).append(record)
    rows = []
    for (fleet, artifact, threads), records in groups.items():
        p50 = {r["target"].removeprefix(fleet + "."): r["latency_ms"]["p50"] for r in records}
        median = statistics.median(p50.values())
        ratio = ratios.get(fleet, 1.25)
        outliers = sorted(
            name for name, value in p50.items()
            if median > 0 and not 1 / ratio <= value / median <= ratio
        )
        outliers += sorted(r["target"].removeprefix(fleet + ".") + " (throttled)" for r in records
                           if r.get("throttled"))
        rows.append({
            "fleet": fleet, "artifact": artifact, "threads": threads, "devices": len(records),
            "median_p50_ms": median, "spread": (max(p50.values()) - min(p50.values())) / median if median else 0.0,
            "p50_ms": p50, "outliers": outliers,
            "failed": sorted(name.removeprefix(fleet + ".") for name in failed if fleet_of.get(name) == fleet),
        })
    return rows


def group_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{
        "artifact": r["artifact"], "fleet": r["fleet"], "threads": str(r["threads"]), "devices": str(r["devices"]),
        "median_p50": f"{r['median_p50_ms']:.3f}", "spread": f"{100 * r['spread']:.1f} %",
        "outliers": ", ".join(r["outliers"]) or "-", "failed": ", ".join(r["failed"]) or "-",
    } for r in rows]
