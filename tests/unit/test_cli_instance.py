"""`boreal instance-node` parsing and validation, the writer in the launcher's topology,
`boreal up`/`status` with a writer: no processes started."""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest

from borealdb.nodes import cli
from borealdb.nodes.cluster import local
from borealdb.protos import storage_pb2

STORAGE = "s-a1@a@127.0.0.1:7101,s-a2@a@127.0.0.1:7102,s-b1@b@127.0.0.1:7103"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def instance_argv(*extra, storage=STORAGE):
    return ["instance-node", "--id", "i-a1", "--az", "a", "--listen", "127.0.0.1:7111", "--storage-nodes", storage, *extra]


@pytest.fixture
def fake_server(monkeypatch):
    """A stand-in instance server module; records the calls of its serve()."""
    calls = []
    mod = types.ModuleType("fake_instance_server")

    def run_server(*args, **kwargs):
        calls.append((args, kwargs))

    mod.run_server = run_server
    monkeypatch.setitem(sys.modules, "fake_instance_server", mod)
    monkeypatch.setenv(cli.INSTANCE_SERVER_MODULE_ENV, "fake_instance_server:run_server")
    monkeypatch.delenv(local.PARENT_PIPE_ENV, raising=False)
    return calls


def test_help_lists_instance_node(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "instance-node" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["instance-node", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: boreal instance-node" in out and "--storage-nodes" in out


def test_storage_nodes_are_parsed():
    args = cli.build_parser().parse_args(instance_argv())
    assert args.storage_nodes == [("s-a1", "a", "127.0.0.1:7101"), ("s-a2", "a", "127.0.0.1:7102"), ("s-b1", "b", "127.0.0.1:7103")]
    assert (args.role, args.volume, args.metrics_listen, args.option) == ("writer", "main", None, [])


@pytest.mark.parametrize("storage, message", [
    ("", "empty entry"),
    ("s-a1@a@127.0.0.1:7101,,s-b1@b@127.0.0.1:7103", "empty entry"),
    ("s-a1", "expected ID@AZ@HOST:PORT"),
    ("s-a1@127.0.0.1:7101", "expected ID@AZ@HOST:PORT"),
    ("s-a1@a@b@127.0.0.1:7101", "expected ID@AZ@HOST:PORT"),
    ("@a@127.0.0.1:7101", "expected ID@AZ@HOST:PORT"),
    ("s-a1@a@localhost", "is not HOST:PORT"),
    ("s-a1@a@127.0.0.1:99999", "is not HOST:PORT"),
    ("s-a1@a@127.0.0.1:7101,s-a1@b@127.0.0.1:7102", "listed twice: s-a1"),
    ("s-a1@a@127.0.0.1:7101,s-b1@b@127.0.0.1:7101", "listed for two storage nodes: 127.0.0.1:7101"),
])
def test_bad_storage_nodes_exit_2(capsys, storage, message):
    with pytest.raises(SystemExit) as e:
        cli.main(instance_argv(storage=storage))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--storage-nodes" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["instance-node", "--id", "i-a1", "--az", "a", "--listen", "127.0.0.1:7111"], "--storage-nodes"),
    (["instance-node", "--az", "a", "--listen", "127.0.0.1:7111", "--storage-nodes", STORAGE], "--id"),
    (instance_argv("--role", "leader"), "invalid choice"),
    (["instance-node", "--id", "i", "--az", "a", "--listen", "nope", "--storage-nodes", STORAGE], "expected HOST:PORT"),
    (instance_argv("--metrics-listen", "7211"), "expected HOST:PORT"),
])
def test_bad_instance_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err


def test_reader_role_needs_writer(capsys, fake_server):
    code, _, err = run(capsys, *instance_argv("--role", "reader"))
    assert code == 2 and "--writer HOST:PORT" in err and "Traceback" not in err
    code, _, err = run(capsys, *instance_argv("--writer", "127.0.0.1:7110"))
    assert code == 2 and "--role reader only" in err
    assert fake_server == []


def test_reader_calls_serve_with_its_writer(capsys, fake_server):
    code, _, err = run(capsys, *instance_argv("--role", "reader", "--writer", "127.0.0.1:7110"))
    assert code == 0, err
    [(_args, kwargs)] = fake_server
    assert kwargs["role"] == "reader" and kwargs["writer"] == "127.0.0.1:7110"


def test_instance_node_calls_serve(capsys, fake_server):
    code, _, err = run(capsys, *instance_argv("--volume", "v2", "--metrics-listen", "127.0.0.1:7211"))
    assert code == 0, err
    [(args, kwargs)] = fake_server
    assert args[:3] == ("i-a1", "a", "127.0.0.1:7111")
    assert all(isinstance(i, storage_pb2.StorageNodeInfo) for i in args[3])
    assert [(i.node_id, i.az, i.address) for i in args[3]] == [
        ("s-a1", "a", "127.0.0.1:7101"), ("s-a2", "a", "127.0.0.1:7102"), ("s-b1", "b", "127.0.0.1:7103")]
    assert kwargs == {"volume_id": "v2", "metrics_listen": "127.0.0.1:7211", "options": None}


def test_volume_options_reach_the_writer(capsys, fake_server):
    code, _, err = run(capsys, *instance_argv("--volume-option", "group_commit_delay_s=0",
                                              "--volume-option", "group-commit-siblings=5"))
    assert code == 0, err
    [(_, kwargs)] = fake_server
    assert kwargs["volume_overrides"] == {"group_commit_delay_s": 0.0, "group_commit_siblings": 5}


@pytest.mark.parametrize("argv, code, message", [
    (["--volume-option", "nope=1"], 1, "--volume-option nope: no such volume option"),
    (["--volume-option", "volume_id=x"], 1, "no such volume option"),  # set by the node, not here
    (["--volume-option", "group_commit_delay_s=5"], 1, "must be in [0, 1]"),
    (["--volume-option", "group_commit_siblings=x"], 1, "--volume-option group_commit_siblings=x: expected a int"),
    (["--role", "reader", "--writer", "127.0.0.1:7110", "--volume-option", "group_commit_delay_s=0"], 2,
     "--volume-option is for the writer"),
])
def test_bad_volume_options(capsys, fake_server, argv, code, message):
    got, _, err = run(capsys, *instance_argv(*argv))
    assert got == code and message in err and "Traceback" not in err and fake_server == []


def test_a_volume_error_at_start_is_a_message(capsys, monkeypatch):
    from borealdb.errors import QuorumLost

    mod = types.ModuleType("failing_instance_server")

    def run_server(*_args, **_kwargs):
        raise QuorumLost("volume 'main': only 0 storage nodes reachable; not creating")

    mod.run_server = run_server
    monkeypatch.setitem(sys.modules, "failing_instance_server", mod)
    monkeypatch.setenv(cli.INSTANCE_SERVER_MODULE_ENV, "failing_instance_server:run_server")
    code, _, err = run(capsys, *instance_argv())
    assert code == 1 and "instance node i-a1: QuorumLost: volume 'main': only 0 storage nodes" in err


def test_instance_options(capsys, fake_server):
    engine = pytest.importorskip("borealdb.nodes.instance.engine")
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(engine.InstanceOptions)}
    defaults = engine.InstanceOptions()
    name = next(n for n, f in fields.items() if type(getattr(defaults, n)) is float)
    code, _, err = run(capsys, *instance_argv("--option", f"{name}=12.5"))
    assert code == 0, err
    [(_, kwargs)] = fake_server
    assert isinstance(kwargs["options"], engine.InstanceOptions) and getattr(kwargs["options"], name) == 12.5


@pytest.mark.parametrize("option, message", [
    ("nope=1", "no such instance option"),
    ("missing-equals", "expected NAME=VALUE"),
])
def test_bad_instance_option(capsys, fake_server, option, message):
    pytest.importorskip("borealdb.nodes.instance.engine")
    code, _, err = run(capsys, *instance_argv("--option", option))
    assert code == 1 and message in err and fake_server == []


def test_instance_option_of_wrong_type(capsys, fake_server):
    engine = pytest.importorskip("borealdb.nodes.instance.engine")
    import dataclasses

    name = next(f.name for f in dataclasses.fields(engine.InstanceOptions) if type(getattr(engine.InstanceOptions(), f.name)) is int)
    code, _, err = run(capsys, *instance_argv("--option", f"{name}=lots"))
    assert code == 1 and "expected a int" in err


def test_missing_instance_server(capsys, monkeypatch):
    monkeypatch.setenv(cli.INSTANCE_SERVER_MODULE_ENV, "borealdb.nodes.instance.no_such_server")
    code, _, err = run(capsys, *instance_argv())
    assert code == 1 and "instance node is not part of this build" in err


# ---- the launcher's topology (nothing started) --------------------------------------


def test_default_topology_has_the_writer_at_base_plus_10(tmp_path):
    c = local.LocalCluster(tmp_path, base_port=30000)
    assert [(n.node_id, n.az, n.role) for n in c.nodes] == [
        ("s-a1", "a", "storage"), ("s-a2", "a", "storage"), ("s-b1", "b", "storage"),
        ("s-b2", "b", "storage"), ("s-c1", "c", "storage"), ("s-c2", "c", "storage"), ("i-a1", "a", "writer")]
    assert [n.address for n in c.nodes] == [f"127.0.0.1:{30000 + i}" for i in [0, 1, 2, 3, 4, 5, 10]]
    assert [n.metrics_address for n in c.nodes] == [f"127.0.0.1:{30100 + i}" for i in [0, 1, 2, 3, 4, 5, 10]]
    assert c.writer().node_id == "i-a1" and c.writer_url() == "boreal://127.0.0.1:30010/"
    assert c.storage_node_infos() == [n.info() for n in c.storage_nodes()]


def test_writer_command_line_round_trips_through_the_parser(tmp_path):
    c = local.LocalCluster(tmp_path, base_port=30000, instance_args=["--option", "x=1"], volume_id="v9")
    cmd = c.writer().spec.command()
    assert cmd[1:4] == ["-m", "borealdb.nodes.cli", "instance-node"]
    args = cli.build_parser().parse_args(cmd[3:])
    assert (args.node_id, args.az, args.role, args.listen, args.volume) == ("i-a1", "a", "writer", "127.0.0.1:30010", "v9")
    assert args.storage_nodes == [(n.node_id, n.az, n.address) for n in c.storage_nodes()]
    assert args.metrics_listen == "127.0.0.1:30110" and args.option == ["x=1"]
    # Storage nodes get no instance flags.
    assert "--option" not in c.node("s-a1").spec.command()


def test_instances_false_and_custom_instances(tmp_path):
    c = local.LocalCluster(tmp_path, instances=False, base_port=30000)
    assert len(c.nodes) == 6 and c.instance_nodes() == []
    with pytest.raises(local.ClusterError, match="no writer"):
        c.writer()
    c = local.LocalCluster(tmp_path, [("s-a1", "a"), ("s-b1", "b")], instances=[("i-b1", "b", "writer"), ("r-c1", "c", "reader")],
                           base_port=30000, metrics=False)
    assert [(n.node_id, n.role, n.address) for n in c.instance_nodes()] == [
        ("i-b1", "writer", "127.0.0.1:30010"), ("r-c1", "reader", "127.0.0.1:30011")]
    assert "--role" in (cmd := c.node("r-c1").spec.command()) and cmd[cmd.index("--role") + 1] == "reader"
    assert c.writer().node_id == "i-b1"


def test_instance_spec_in_topology_and_errors(tmp_path):
    c = local.LocalCluster(tmp_path, [("s-a1", "a"), local.NodeSpec("i-a1", "a", role="writer")], instances=False)
    assert c.writer().spec.storage_nodes[0].node_id == "s-a1"
    with pytest.raises(local.ClusterError, match="no storage nodes"):
        local.LocalCluster(tmp_path, [("i-a1", "a", "writer")], instances=False)
    with pytest.raises(local.ClusterError, match="duplicate"):
        local.LocalCluster(tmp_path, [("i-a1", "a")])
    with pytest.raises(local.ClusterError, match="unknown role"):
        local.NodeSpec("x", "a", role="router", listen="127.0.0.1:1", data_dir=tmp_path).command()


def test_up_reuses_ports_of_a_cluster_with_a_writer(tmp_path):
    for kwargs in ({}, {"instances": False}):
        d = tmp_path / str(len(kwargs))
        d.mkdir()
        local.LocalCluster(d, base_port=31000, **kwargs).write_state()
        assert cli._previous_base_port(d) == 31000
    d = tmp_path / "moved"
    d.mkdir()
    spec = local.NodeSpec("i-a1", "a", role="writer", listen="127.0.0.1:31020")
    local.LocalCluster(d, base_port=31000, instances=[spec]).write_state()
    assert cli._previous_base_port(d) is None


def test_state_records_the_writer(tmp_path):
    local.LocalCluster(tmp_path, base_port=31000).write_state()
    raw = json.loads((tmp_path / "cluster.json").read_text())
    assert raw["nodes"][-1]["node_id"] == "i-a1" and raw["nodes"][-1]["role"] == "writer"
    assert raw["nodes"][-1]["address"] == "127.0.0.1:31010"
    state = local.load_cluster_state(tmp_path)
    assert [r.node_id for r in state.instance_records()] == ["i-a1"] and len(state.storage_records()) == 6
    with pytest.raises(local.ClusterError, match="not running"):
        state.writer_address()


def test_up_checks_the_writer_ports(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if not 11 <= port <= 65535 - 200:
            pytest.skip("the OS gave a port out of range")
        code, _, err = run(capsys, "up", "--data", str(tmp_path / "d"), "--base-port", str(port - 10), "--detach")
    assert code == 1 and f"{port}" in err and "already in use" in err


def test_format_status_with_a_writer():
    report = {
        "nodes": [
            {"node_id": "s-a1", "az": "a", "role": "storage", "address": "127.0.0.1:7101", "up": True, "error": None,
             "uptime_ms": 5000, "segments": 1},
            {"node_id": "i-a1", "az": "a", "role": "writer", "address": "127.0.0.1:7111", "up": True, "error": None,
             "uptime_ms": 65_000, "epoch": 4, "vdl": 900, "vcl": 910, "sessions": 3, "fenced": False},
            {"node_id": "i-b1", "az": "b", "role": "writer", "address": "127.0.0.1:7112", "up": False,
             "error": "UNAVAILABLE", "uptime_ms": None, "epoch": None, "vdl": None, "sessions": None},
        ],
        "pgs": [{"volume_id": "main", "pg": 0, "members": ["s-a1"], "scl": {"s-a1": 12}, "epochs": [4],
                 "vdl_hint": 10, "pgcl": None, "reporting": 1}],
    }
    lines = cli.format_status(report).splitlines()
    header = next(line for line in lines if line.startswith("INSTANCE"))
    row = lines[lines.index(header) + 1]
    down = lines[lines.index(header) + 2]
    assert header.split() == ["INSTANCE", "ROLE", "AZ", "ADDRESS", "STATE", "UPTIME", "EPOCH", "VDL", "SESSIONS",
                              "REPLICA_LAG"]
    assert row.split() == ["i-a1", "writer", "a", "127.0.0.1:7111", "up", "1m05s", "4", "900", "3", "-"]
    assert header.index("VDL") == row.index("900")
    assert "down (UNAVAILABLE)" in down and down.split()[-4:] == ["-", "-", "-", "-"]
    pg_header = next(line for line in lines if line.startswith("VOLUME"))
    assert "i-a1" not in pg_header and "SCL@s-a1" in pg_header
