"""Fleets: a target that is a group of boards, from a profile's device list or an Ansible-style inventory.

The boards are real sshd servers on 127.0.0.1 (tests/sshd.py) running this interpreter as
the device's python; an "unreachable" board is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from sshd import start_ssh_server

from toolchain.cli import main
from toolchain.config import load_profile
from toolchain.errors import ConfigError
from toolchain.fleet import expand_fleet, group_rows
from toolchain.inventory import load_inventory

QUICK = ["--min-runs", "5", "--min-seconds", "0", "--max-seconds", "10"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    server = start_ssh_server(tmp_path_factory.mktemp("sshd-b"))
    yield server
    server.stop()


def write_fleet_profile(folder: Path, name: str, fleet: str, connection: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(f'[connection]\nkind = "fleet"\n{connection}\n[fleet]\n{fleet}\n')
    return path


INI = """
# the lab's own inventory
[pi4]
pi-a ansible_host=10.0.0.5 ansible_port=2201
pi-b ansible_host=10.0.0.6 ansible_user=admin

[pi4:vars]
ansible_user=pi
ansible_ssh_private_key_file=keys/lab_ed25519
site=berlin

[pi5]
pi-c ansible_host=10.0.0.7

[boards:children]
pi4
pi5
"""

YAML = """
all:
  vars:
    ansible_user: pi
  children:
    pi4:
      hosts:
        pi-a: {ansible_host: 10.0.0.5, ansible_port: 2201}
        pi-b: {ansible_host: 10.0.0.6, ansible_user: admin}
      vars:
        ansible_ssh_private_key_file: keys/lab_ed25519
    boards:
      children:
        pi4:
        pi5:
          hosts:
            pi-c: {ansible_host: 10.0.0.7}
"""


@pytest.mark.parametrize("text", [INI, YAML], ids=["ini", "yaml"])
def test_inventory_groups_children_and_variable_precedence(tmp_path, text):
    path = tmp_path / "hosts"
    path.write_text(text)
    inventory = load_inventory(path)
    pi4 = dict(inventory.members("pi4"))
    assert list(pi4) == ["pi-a", "pi-b"]
    assert pi4["pi-a"]["ansible_user"] == "pi"  # group vars
    assert pi4["pi-b"]["ansible_user"] == "admin"  # host vars win
    assert str(pi4["pi-a"]["ansible_port"]) == "2201"
    assert [name for name, _ in inventory.members("boards")] == ["pi-a", "pi-b", "pi-c"]


def test_fleet_from_inventory_expands_to_device_profiles(tmp_path):
    (tmp_path / "lab.ini").write_text(INI)
    path = write_fleet_profile(tmp_path / "profiles", "pi4", 'inventory = "../lab.ini"',
                               'python = "/usr/bin/python3"\nknown_hosts = "kh"')
    fleet = expand_fleet(load_profile(path))
    assert [d.name for d in fleet.devices] == ["pi4.pi-a", "pi4.pi-b"]
    a, b = (d.connection for d in fleet.devices)
    assert (a.kind, a.host, a.port, a.user) == ("ssh", "10.0.0.5", 2201, "pi")
    assert (b.host, b.port, b.user) == ("10.0.0.6", None, "admin")
    assert a.identity == tmp_path / "keys" / "lab_ed25519"  # relative to the inventory
    assert a.python == "/usr/bin/python3" and a.known_hosts == tmp_path / "profiles" / "kh"  # shared


@pytest.mark.parametrize("inventory, fleet, message", [
    (INI, 'inventory = "lab.ini"\ngroup = "pi44"', "no group 'pi44' (did you mean 'pi4'?)"),
    ("[pi4]\nbad;name ansible_host=x\n", 'inventory = "lab.ini"\ngroup = "pi4"', "host name 'bad;name' is not"),
    ("[pi4]\nweb[01:09]\n", 'inventory = "lab.ini"\ngroup = "pi4"', "ranges like web[01:09] are not supported"),
    ("[pi4]\npi-a ansible_host=10.0.0.5 ansible_port=0\n", 'inventory = "lab.ini"\ngroup = "pi4"',
     "device 'pi-a': 'port'"),
    ("[pi4]\npi-a ansible_host=$(reboot)\n", 'inventory = "lab.ini"\ngroup = "pi4"', "device 'pi-a': 'host'"),
    ("[pi4:children]\nlab\n[lab:children]\npi4\n", 'inventory = "lab.ini"\ngroup = "pi4"',
     "group 'pi4' contains itself (pi4 -> lab -> pi4)"),
    ("[pi4:children]\nnowhere\n", 'inventory = "lab.ini"\ngroup = "pi4"',
     "group 'pi4' lists unknown child group 'nowhere'"),
    ("[pi4:hostvars]\n", 'inventory = "lab.ini"', "unknown section '[pi4:hostvars]'"),
    ("[pi4]\npi-a ansible_host\n", 'inventory = "lab.ini"', "expected key=value after the host name"),
    ("all: [1, 2]\n", 'inventory = "lab.ini"', "group 'all' must be a mapping"),
    ("all:\n  children: {pi4: {hosts: {a: 1}\n", 'inventory = "lab.ini"', "not valid YAML"),
    (None, 'devices = [{name = "a", host = "h"}, {name = "a", host = "g"}]', "device 'a' is listed twice"),
    (None, 'inventory = "absent.ini"', "absent.ini: cannot read it"),
    (INI, 'inventory = "lab.ini"\ngroup = "pi5"\ndevices = [{name = "pi-c", host = "h"}]',
     "device 'pi-c' is listed twice"),
])
def test_bad_inventories_and_fleets_name_the_problem(tmp_path, inventory, fleet, message):
    if inventory is not None:
        (tmp_path / "lab.ini").write_text(inventory)
    path = write_fleet_profile(tmp_path, "pi4", fleet)
    with pytest.raises(ConfigError) as error:
        expand_fleet(load_profile(path))
    assert message in str(error.value)


@pytest.mark.parametrize("body, message", [
    ('[connection]\nkind = "fleet"\n', "a [fleet] section and connection.kind = 'fleet' go together"),
    ('[connection]\nkind = "ssh"\nhost = "h"\n[fleet]\ndevices = [{name = "a", host = "h"}]\n',
     "a [fleet] section and connection.kind = 'fleet' go together"),
    ('[connection]\nkind = "fleet"\n[fleet]\n', "a fleet needs 'devices' or an 'inventory' file"),
    ('[connection]\nkind = "fleet"\n[fleet]\ngroup = "g"\ndevices = [{name = "a", host = "h"}]\n',
     "'group' names a group of the 'inventory' file; set inventory too"),
    ('[connection]\nkind = "fleet"\n[fleet]\noutlier_ratio = 1\ndevices = [{name = "a", host = "h"}]\n',
     "outlier_ratio"),
])
def test_bad_fleet_profiles_are_config_errors(tmp_path, body, message):
    path = tmp_path / "lab.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_profile(path)
    assert message in str(error.value)


def record(target: str, p50: float, throttled: bool = False) -> dict:
    return {"target": target, "artifact": "m.onnx", "threads": 1, "latency_ms": {"p50": p50},
            "throttled": throttled}


def test_group_rows_flag_outliers_and_throttled_devices():
    fleet_of = {f"lab.{n}": "lab" for n in "abcde"}
    results = [record("lab.a", 10.0), record("lab.b", 10.4), record("lab.c", 9.8), record("lab.d", 21.0),
               record("lab.e", 10.1, throttled=True), record("local", 3.0)]
    [row] = group_rows(results, fleet_of, {"lab.f": "cannot connect"}, {"lab": 1.25})
    assert row["devices"] == 5 and row["median_p50_ms"] == 10.1
    assert row["outliers"] == ["d", "e (throttled)"]
    assert row["spread"] == pytest.approx((21.0 - 9.8) / 10.1)
    assert row["failed"] == []  # lab.f is not a device of this fleet_of
    [row] = group_rows(results, {**fleet_of, "lab.f": "lab"}, {"lab.f": "cannot connect"}, {"lab": 2.5})
    assert row["outliers"] == ["e (throttled)"] and row["failed"] == ["f"]


@pytest.mark.heavy
def test_bench_fleet_reports_devices_and_group_and_isolates_an_unreachable_one(
        ssh_server, second_server, tiny_onnx_file, tmp_path, capsys):
    dead = closed_port()
    lines = ["[lab]"]
    for name, server in (("board-a", ssh_server), ("board-b", second_server)):
        lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={server.port} "
                     f"ansible_ssh_private_key_file={server.identity_file}")
    lines.append(f"board-off ansible_host=127.0.0.1 ansible_port={dead}")
    (tmp_path / "lab.ini").write_text("\n".join(lines) + f"\n[lab:vars]\nansible_user={ssh_server.user}\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(ssh_server.host_key_line + "\n" + second_server.host_key_line + "\n")
    write_fleet_profile(tmp_path / "profiles", "lab", 'inventory = "../lab.ini"',
                        f'python = "{sys.executable}"\nknown_hosts = "{known_hosts}"\nretries = 0\n'
                        "connect_timeout_seconds = 5")
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_onnx_file), "--target", "lab", "--targets-dir", str(tmp_path / "profiles"),
                 "--out", str(out), *QUICK])
    captured = capsys.readouterr()
    assert code == 6
    assert "1 device(s) failed, the others were measured" in captured.err
    assert "target 'lab.board-off'" in captured.err and f"127.0.0.1:{dead}" in captured.err
    document = json.loads(out.read_text())
    assert sorted(r["target"] for r in document["results"]) == ["lab.board-a", "lab.board-b"]
    assert {r["fleet"] for r in document["results"]} == {"lab"}
    [group] = document["groups"]
    assert group["devices"] == 2 and group["failed"] == ["board-off"]
    assert sorted(group["p50_ms"]) == ["board-a", "board-b"]
    assert group["median_p50_ms"] > 0
    assert list(document["failed"]) == ["lab.board-off"]
    assert "fleets (median of the devices' p50)" in captured.out and "board-off" in captured.out


@pytest.mark.heavy
def test_pipeline_benchmarks_a_fleet_per_device_with_a_group_row(ssh_server, second_server, small_cnn_file,
                                                                  tmp_path):
    from toolchain.config import load_config
    from toolchain.pipeline import run_pipeline

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(ssh_server.host_key_line + "\n" + second_server.host_key_line + "\n")
    devices = ", ".join(f'{{name = "{name}", host = "127.0.0.1", port = {server.port}, '
                        f'identity = "{server.identity_file}"}}'
                        for name, server in (("a", ssh_server), ("b", second_server)))
    write_fleet_profile(tmp_path / "profiles", "lab", f"devices = [{devices}]",
                        f'user = "{ssh_server.user}"\npython = "{sys.executable}"\nknown_hosts = "{known_hosts}"')
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(
        f'[model]\npath = "{small_cnn_file}"\n[export]\nformats = ["onnx"]\n[export.onnx]\nrecipes = ["fp32"]\n'
        f'[verify]\nenabled = false\n[report]\nenabled = false\n[bench]\ntargets = ["lab"]\n'
        f'targets_dir = "{tmp_path / "profiles"}"\nmin_runs = 5\nmin_seconds = 0\n')
    config, raw = load_config(pipeline)
    result = run_pipeline(config, raw, tmp_path / "run", quiet=True)
    assert sorted((r["target"], r["fleet"]) for r in result.bench["results"]) == [("lab.a", "lab"), ("lab.b", "lab")]
    [group] = result.bench["groups"]
    assert group["fleet"] == "lab" and group["devices"] == 2 and sorted(group["p50_ms"]) == ["a", "b"]
    assert sorted(result.manifest["artifacts"][0]["bench"]) == ["lab.a", "lab.b"]
