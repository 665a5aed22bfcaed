"""The `boreal` command line: parsing, help and error messages (no processes started)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types

import pytest

from borealdb.nodes import cli

COMMANDS = ["up", "down", "status", "storage-node", "bench"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: boreal {command}" in out
    assert len(out.splitlines()) > 3


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "commands" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["storage-node", "--id", "s-a1", "--az", "a", "--listen", "nope", "--data", "d"], "expected HOST:PORT"),
        (["storage-node", "--id", "s-a1", "--az", "a", "--listen", "127.0.0.1:99999", "--data", "d"], "expected HOST:PORT"),
        (["storage-node", "--az", "a", "--listen", "127.0.0.1:1", "--data", "d"], "--id"),
        (["storage-node", "--id", "x", "--az", "a", "--listen", "127.0.0.1:1", "--data", "d", "--gossip-interval-s", "0"], "> 0"),
        (["up", "--base-port", "http"], "expected a port number"),
        (["up", "--base-port", "65500"], "expected a port number"),
        (["status", "--timeout", "-1"], "> 0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_message(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_status_without_data_dir(capsys, tmp_path):
    code, _, err = run(capsys, "status", "--data", str(tmp_path / "missing"))
    assert code == 1
    assert err.startswith("boreal: error: no data directory") and "boreal up" in err


def test_status_without_cluster(capsys, tmp_path):
    code, _, err = run(capsys, "status", "--data", str(tmp_path))
    assert code == 1 and "no cluster in" in err


def test_status_with_corrupt_state(capsys, tmp_path):
    (tmp_path / "cluster.json").write_text("{not json")
    code, _, err = run(capsys, "status", "--data", str(tmp_path))
    assert code == 1 and "cannot read" in err


def test_down_without_data_dir(capsys, tmp_path):
    code, _, err = run(capsys, "down", "--data", str(tmp_path / "missing"))
    assert code == 1 and "nothing to stop" in err


def test_down_without_cluster_is_a_no_op(capsys, tmp_path):
    code, out, _ = run(capsys, "down", "--data", str(tmp_path))
    assert code == 0 and "nothing to stop" in out


def test_up_with_data_path_that_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run(capsys, "up", "--data", str(tmp_path / "f"), "--detach")
    assert code == 1 and "not a directory" in err


def test_up_refuses_ports_in_use(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if port > 65535 - 200:
            pytest.skip("the OS gave a port too high for --base-port")
        code, _, err = run(capsys, "up", "--data", str(tmp_path / "d"), "--base-port", str(port), "--detach")
    assert code == 1 and f"{port}" in err and "already in use" in err
    assert not (tmp_path / "d" / "cluster.json").exists()


def test_storage_node_data_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run(capsys, "storage-node", "--id", "s-a1", "--az", "a", "--listen", "127.0.0.1:1", "--data", str(tmp_path / "f"))
    assert code == 1 and "not a directory" in err


def test_storage_node_missing_server_module(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.SERVER_MODULE_ENV, "borealdb.nodes.storage.no_such_server")
    code, _, err = run(capsys, "storage-node", "--id", "s-a1", "--az", "a", "--listen", "127.0.0.1:1", "--data", str(tmp_path))
    assert code == 1 and "not part of this build" in err


def test_bench_delegates_every_argument(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("borealdb.nodes.volume.bench")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "borealdb.nodes.volume.bench", fake)
    code, _, _ = run(capsys, "bench", "volume", "--help", "--seconds", "3")
    assert code == 7 and seen == [["--help", "--seconds", "3"]]


def test_bench_missing_module(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "borealdb.nodes.volume.bench", None)
    code, _, err = run(capsys, "bench", "volume")
    assert code == 1 and "not part of this build" in err and "Traceback" not in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "borealdb.nodes.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "storage-node" in out.stdout


def test_pgcl_is_fourth_highest():
    assert cli.pgcl([5, 9, 7, 1, 3, 8]) == 5
    assert cli.pgcl([1, 2, 3]) is None


def test_format_status_table_is_aligned():
    report = {
        "nodes": [
            {"node_id": "s-a1", "az": "a", "address": "127.0.0.1:7101", "up": True, "error": None, "uptime_ms": 3_723_000, "segments": 1},
            {"node_id": "s-a2", "az": "a", "address": "127.0.0.1:7102", "up": False, "error": "UNAVAILABLE", "uptime_ms": None, "segments": None},
        ],
        "pgs": [{"volume_id": "v", "pg": 0, "members": ["s-a1", "s-a2"], "scl": {"s-a1": 12}, "epochs": [2],
                 "vdl_hint": 10, "pgcl": None, "reporting": 1}],
    }
    text = cli.format_status(report)
    lines = text.splitlines()
    assert lines[0].index("ADDRESS") == lines[1].index("127.0.0.1:7101") == lines[2].index("127.0.0.1:7102")
    assert "1h02m" in text and "down (UNAVAILABLE)" in text
    pg_header = next(line for line in lines if line.startswith("VOLUME"))
    pg_row = lines[lines.index(pg_header) + 1]
    assert pg_row.split() == ["v", "0", "2", "?", "10", "12", "down"]


def _storage_args(*extra):
    return cli.build_parser().parse_args(
        ["storage-node", "--id", "s-a1", "--az", "a", "--listen", "127.0.0.1:1", "--data", "d", *extra])


def test_storage_flags_map_to_storage_options():
    engine = pytest.importorskip("borealdb.nodes.storage.engine")
    opts = cli._storage_options(_storage_args("--gossip-interval-s", "0.1", "--scrub-interval-s", "2",
                                              "--retention-s", "3", "--option", "gc_interval_s=1.5"))
    assert isinstance(opts, engine.StorageOptions)
    assert (opts.gossip_interval_s, opts.scrub_interval_s, opts.retention_s, opts.gc_interval_s) == (0.1, 2.0, 3.0, 1.5)


@pytest.mark.parametrize("option, message", [
    ("nope=1", "no such storage option"),
    ("gc_interval_s=soon", "expected a float"),
    ("missing-equals", "expected NAME=VALUE"),
])
def test_bad_storage_option(option, message):
    pytest.importorskip("borealdb.nodes.storage.engine")
    with pytest.raises(cli.CliError, match=message):
        cli._storage_options(_storage_args("--option", option))


def test_bench_without_target_runs_the_sql_benchmark(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("borealdb.nodes.instance.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "borealdb.nodes.instance.bench", fake)
    code, _, _ = run(capsys, "bench", "--concurrency", "1", "--duration-s", "2")
    assert code == 0 and seen == [["--concurrency", "1", "--duration-s", "2"]]


def test_bench_client_must_be_threads_or_asyncio(capsys):
    from borealdb.nodes.instance.bench import parse_args

    assert parse_args([]).client == "threads" and parse_args(["--client", "asyncio"]).client == "asyncio"
    with pytest.raises(SystemExit) as e:  # argparse's usage error, before any cluster starts
        parse_args(["--client", "greenlets"])
    assert e.value.code == 2 and "--client" in capsys.readouterr().err


def test_bench_rpc_measures_real_messages():
    # A real echo server process on 127.0.0.1 and real calls, briefly: every measurement
    # reports messages it actually exchanged and CPU spent on both sides.
    out = subprocess.run([sys.executable, "-m", "borealdb.nodes.cli", "bench", "rpc", "--concurrency", "2",
                          "--duration-s", "0.3", "--idle-gaps-ms", "0,2", "--idle-calls", "5", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["kind"], r.get("in_flight", r.get("gap_ms"))) for r in rows] == [
        ("unary", 2), ("stream", 2), ("after idle", 0), ("after idle", 2)]
    for r in rows[:2]:
        assert r["messages"] > 0 and r["messages_per_s"] > 0
        assert r["server_cpu_ms_per_message"] > 0 and r["client_cpu_ms_per_message"] > 0
    for r in rows[2:]:
        assert r["calls"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"]


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0"], "1..256"),
    (["--concurrency", "a,b"], "comma-separated integers"),
    (["--duration-s", "0"], "--duration-s"),
    (["--idle-gaps-ms", "-1"], "0..1000 ms"),
    (["--idle-gaps-ms", "x"], "comma-separated milliseconds"),
    (["--idle-calls", "0"], "--idle-calls"),
])
def test_bench_rpc_bad_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as e:  # argparse's usage error, before any process starts
        cli.main(["bench", "rpc", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
