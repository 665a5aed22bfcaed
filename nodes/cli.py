"""The `boreal` command: run nodes, start and stop a local cluster, inspect it, benchmark.

    boreal up [--data DIR] [--base-port 7101] [--detach]   start 6 storage nodes (2 per AZ a/b/c), the writer, 2 readers
    boreal status [--data DIR] [--json]                    nodes, writer, segments, PGCL, VDL hint
    boreal down [--data DIR]                               stop what `up` started (instances first)
    boreal storage-node --id ID --az AZ --listen H:P --data DIR   run one storage node
    boreal instance-node --id ID --az AZ --listen H:P --storage-nodes ID@AZ@H:P,...   run the SQL writer (or a reader)
    boreal bench [...]                                     SQL commit benchmark (optionally vs PostgreSQL)
    boreal bench volume [...]                              storage volume benchmark
    boreal bench lag [...]                                 read replica lag and replica SELECTs/s
    boreal bench rpc [...]                                 CPU per gRPC message in Python (no borealdb code)
    boreal sql [URL] [-c SQL] [-f FILE] [--timer]          SQL shell on the writer (or URL)

Exit codes: 0 success, 1 failure (the message says why), 2 bad arguments,
130 interrupted. `boreal status` exits 1 when any node is down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

DEFAULT_DATA = "./boreal-data"
PROG = "boreal"
SERVER_MODULE_ENV = "BOREAL_STORAGE_SERVER_MODULE"
INSTANCE_SERVER_MODULE_ENV = "BOREAL_INSTANCE_SERVER_MODULE"


class CliError(Exception):
    """An error reported as `boreal: error: ...` with exit code 1 and no traceback."""


class CliUsageError(CliError):
    """Like CliError, but a usage error: exit code 2."""


# ---- argument parsing ----------------------------------------------------------


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:7101), got {value!r}")
    return value


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535 - 200:
        raise argparse.ArgumentTypeError(f"expected a port number between 1 and {65535 - 200}, got {value!r}")
    return int(value)


def _storage_nodes(value: str) -> list[tuple[str, str, str]]:
    """--storage-nodes ID@AZ@HOST:PORT,... -> [(node_id, az, address)]."""
    example = "e.g. s-a1@a@127.0.0.1:7101,s-a2@a@127.0.0.1:7102"
    nodes: list[tuple[str, str, str]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            raise argparse.ArgumentTypeError(f"empty entry in {value!r}; expected ID@AZ@HOST:PORT,... ({example})")
        parts = item.split("@")
        if len(parts) != 3 or not all(parts):
            raise argparse.ArgumentTypeError(f"{item!r}: expected ID@AZ@HOST:PORT ({example})")
        node_id, az, address = parts
        try:
            _listen_address(address)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{item!r}: {address!r} is not HOST:PORT ({example})") from None
        nodes.append((node_id, az, address))
    ids = [n[0] for n in nodes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"storage node id(s) listed twice: {', '.join(dup)}")
    addrs = [n[2] for n in nodes]
    dup = sorted({a for a in addrs if addrs.count(a) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"address(es) listed for two storage nodes: {', '.join(dup)}")
    return nodes


def _positive_float(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return f


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="borealdb: an Aurora-style database cluster. Storage nodes hold a volume "
        "replicated 6 ways over 3 availability zones (write quorum 4/6, read quorum 3/6).",
        epilog="Run `boreal COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser(
        "up",
        help="start a local cluster: 6 storage nodes, 2 in each of AZs a, b, c, the SQL writer and 2 readers",
        description="Start a local cluster as processes on 127.0.0.1: 6 storage nodes (s-a1, s-a2, "
        "s-b1, s-b2, s-c1, s-c2; 2 per AZ), then, once they are ready, the SQL writer instance "
        "i-a1 (AZ a) on the volume 'main', then the read replicas i-b1 (AZ b) and i-c1 (AZ c). "
        "Storage node i listens on BASE_PORT+i (gRPC) and BASE_PORT+100+i (Prometheus /metrics); "
        "the writer on BASE_PORT+10 and BASE_PORT+110, the readers on BASE_PORT+11..12 and "
        "BASE_PORT+111..112. "
        "Without --detach it stays in the foreground and stops every node on Ctrl-C or SIGTERM; "
        "with --detach it returns once every node is ready and `boreal down` stops them. "
        "Connect with `boreal sql`.",
    )
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                   help=f"cluster directory: one sub-directory per node and cluster.json (default: {DEFAULT_DATA})")
    p.add_argument("--base-port", type=_port, default=None, metavar="PORT",
                   help="first gRPC port; nodes use PORT..PORT+5, metrics PORT+100..PORT+105 (default: the "
                   "ports this data dir used last time, else 7101; segments remember their peers' addresses)")
    p.add_argument("--detach", action="store_true", help="return once all nodes are ready; they keep running")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the storage nodes, then for the writer, to become ready (default: 60)")
    p.add_argument("--storage-only", action="store_true", help="start the 6 storage nodes but no writer instance")

    p = sub.add_parser(
        "down",
        help="stop the cluster that `boreal up` started",
        description="Stop the nodes recorded in DIR/cluster.json: SIGTERM, wait up to --grace "
        "seconds, then SIGKILL. Says what it stopped; does nothing if nothing runs.",
    )
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR", help=f"cluster directory (default: {DEFAULT_DATA})")
    p.add_argument("--grace", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="seconds between SIGTERM and SIGKILL (default: 10)")

    p = sub.add_parser(
        "status",
        help="show nodes (up/down, uptime), the writer (epoch, VDL, sessions) and, per volume and PG, "
        "each segment's SCL, the PGCL, epoch and VDL hint",
        description="Ask every node of the cluster in DIR for its status and show: each storage node's "
        "AZ, address, up/down and uptime; each instance's role, address, up/down, epoch, VDL and "
        "open sessions (InstanceStatus); and for every volume and protection group, each "
        "segment's SCL by node, the PGCL (the 4th highest SCL of the 6 segments: the highest "
        "LSN a write quorum holds), the epoch and the VDL hint (highest VDL any segment was "
        "told). Exits 1 if any node is down.",
    )
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR", help=f"cluster directory (default: {DEFAULT_DATA})")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--timeout", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="per-node RPC timeout (default: 1)")

    p = sub.add_parser(
        "storage-node",
        help="run one storage node in the foreground (what `boreal up` starts 6 of)",
        description="Run one storage node until SIGTERM or SIGINT. It serves the StorageNode gRPC "
        "service (protos/storage.proto) on --listen and keeps its segments in --data.",
    )
    p.add_argument("--id", required=True, dest="node_id", metavar="ID", help="node id, e.g. s-a1")
    p.add_argument("--az", required=True, metavar="AZ", help="availability zone, e.g. a")
    p.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT", help="gRPC address, e.g. 127.0.0.1:7101")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory (created if missing)")
    p.add_argument("--metrics-listen", type=_listen_address, metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (default: no metrics endpoint)")
    p.add_argument("--gossip-interval-s", type=_positive_float, metavar="SECONDS",
                   help="how often segments gossip with their peers to fill gaps (default: the node's)")
    p.add_argument("--scrub-interval-s", type=_positive_float, metavar="SECONDS",
                   help="how often each segment's stored records are re-verified against their checksums "
                   "(default: the node's, 60; the pace is --option scrub_frames_per_s=N)")
    p.add_argument("--retention-s", type=_positive_float, metavar="SECONDS",
                   help="how long old page versions are kept for readers (default: the node's)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="set any field of StorageOptions (nodes/storage/engine.py), e.g. "
                   "--option gc_interval_s=1; repeatable")

    p = sub.add_parser(
        "instance-node",
        help="run one SQL instance node (the writer) in the foreground (what `boreal up` starts)",
        description="Run one instance node until SIGTERM or SIGINT: SQLite on the volume --volume, "
        "stored on the storage nodes --storage-nodes; it recovers the volume, then serves the "
        "Instance gRPC service (protos/sql.proto) on --listen.",
    )
    p.add_argument("--id", required=True, dest="node_id", metavar="ID", help="node id, e.g. i-a1")
    p.add_argument("--az", required=True, metavar="AZ", help="availability zone, e.g. a")
    p.add_argument("--role", choices=["writer", "reader"], default="writer",
                   help="writer (default) or reader (a read replica: needs --writer)")
    p.add_argument("--writer", type=_listen_address, metavar="HOST:PORT",
                   help="reader only: the writer instance whose redo stream it follows")
    p.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT", help="gRPC address, e.g. 127.0.0.1:7111")
    p.add_argument("--storage-nodes", required=True, type=_storage_nodes, metavar="ID@AZ@HOST:PORT,...",
                   help="the storage nodes of the volume, comma-separated, e.g. "
                   "s-a1@a@127.0.0.1:7101,s-a2@a@127.0.0.1:7102,...")
    p.add_argument("--volume", default="main", metavar="VOLUME_ID", help="volume id (default: main)")
    p.add_argument("--metrics-listen", type=_listen_address, metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (default: no metrics endpoint)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="set any field of InstanceOptions (nodes/instance/engine.py); repeatable")
    p.add_argument("--volume-option", action="append", default=[], metavar="NAME=VALUE",
                   help="writer only: set a field of VolumeConfig (nodes/volume/volume.py), e.g. "
                   "group_commit_delay_s=0; repeatable")

    p = sub.add_parser(
        "bench",
        help="benchmarks: `boreal bench --help` (SQL commits), `boreal bench volume|lag|rpc --help`",
        description="Benchmarks. `boreal bench [ARGS...]` runs single-row INSERT commits through the SQL "
        "client (borealdb.nodes.instance.bench); `boreal bench volume [ARGS...]` the storage volume alone "
        "(borealdb.nodes.volume.bench); `boreal bench lag [ARGS...]` read replica lag and replica reads "
        "(borealdb.nodes.instance.lag_bench); `boreal bench rpc [ARGS...]` the CPU cost of one gRPC "
        "message (borealdb.nodes.rpc_bench). Each has its own --help.",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the benchmark")

    p = sub.add_parser(
        "sql",
        help="SQL shell: interactive, or run statements (-c) or a script (-f, or stdin)",
        description="Connect to an instance node and run SQL. Without -c or -f it reads a script "
        "from stdin when stdin is not a terminal, else starts an interactive shell (.help lists "
        "its commands). Errors print `Error: MESSAGE`; -c, -f and stdin scripts stop at the "
        "first error and exit 1.",
    )
    p.add_argument("url", nargs="?", metavar="URL",
                   help="boreal://HOST:PORT/ (default: $BOREAL_URL, else the writer of the local cluster in --data)")
    p.add_argument("-c", dest="sql_command", metavar="SQL", help="run these statements (separated by ;) and exit")
    p.add_argument("-f", dest="sql_file", metavar="FILE", help="run the script in FILE (- for stdin) and exit")
    p.add_argument("--timer", action="store_true", help="print each statement's run time")
    p.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                   help=f"cluster directory whose writer to use when no URL is given (default: {DEFAULT_DATA})")
    return parser


# ---- storage-node ----------------------------------------------------------------


def _exit_with_parent() -> None:
    """If the launcher passed a pipe, terminate (SIGTERM to self) when it closes: the launcher died."""
    from borealdb.nodes.cluster.local import PARENT_PIPE_ENV

    fd_text = os.environ.pop(PARENT_PIPE_ENV, None)
    if not fd_text:
        return
    fd = int(fd_text)

    def watch() -> None:
        # Leave SIGTERM/SIGINT to the threads of the server (it may sigwait() for them).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _storage_options(args: argparse.Namespace) -> Any:
    wanted = {
        "gossip_interval_s": args.gossip_interval_s,
        "scrub_interval_s": args.scrub_interval_s,
        "retention_s": args.retention_s,
    }
    wanted = {k: v for k, v in wanted.items() if v is not None}
    raw: dict[str, str] = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--option {item!r}: expected NAME=VALUE")
        raw[name.strip().replace("-", "_")] = value.strip()
    if raw and not wanted and not _has_storage_engine():
        raise CliError("this build's storage node takes no options (borealdb.nodes.storage.engine.StorageOptions is missing)")
    try:
        from borealdb.nodes.storage.engine import StorageOptions
    except ImportError:
        if wanted:
            raise CliError("this build's storage node takes no options (borealdb.nodes.storage.engine.StorageOptions is missing)") from None
        return None
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(StorageOptions):
        defaults = {f.name: getattr(StorageOptions(), f.name) for f in dataclasses.fields(StorageOptions)}
    else:
        defaults = {k: p.default for k, p in inspect.signature(StorageOptions).parameters.items()}
    unknown = sorted(set(wanted) - set(defaults))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise CliError(f"this storage node does not support {flags}")
    for name, text in raw.items():
        if name not in defaults:
            raise CliError(f"--option {name}: no such storage option (known: {', '.join(sorted(defaults))})")
        kind = type(defaults[name])
        try:
            if kind is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("1", "true", "yes")
            elif kind in (int, float, str):
                value = kind(text)
            else:
                raise CliError(f"--option {name}: cannot be set from the command line")
        except ValueError:
            raise CliError(f"--option {name}={text}: expected a {kind.__name__}") from None
        wanted[name] = value
    return StorageOptions(**wanted)


def _has_storage_engine() -> bool:
    try:
        from borealdb.nodes.storage.engine import StorageOptions  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_storage_node(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise CliError(f"--data {data}: exists and is not a directory")
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"--data {data}: cannot create: {e.strerror}") from None
    _exit_with_parent()
    import importlib

    # Tests of the launcher substitute a stand-in server module with the same serve().
    module_name = os.environ.get(SERVER_MODULE_ENV) or "borealdb.nodes.storage.server"
    try:
        serve = importlib.import_module(module_name).serve
    except ModuleNotFoundError as e:
        if e.name in (module_name, "borealdb.nodes.storage"):
            raise CliError(f"the storage node is not part of this build ({module_name} is missing)") from None
        raise
    options = _storage_options(args)
    serve(args.node_id, args.az, args.listen, str(data), metrics_listen=args.metrics_listen, options=options)
    return 0


# ---- instance-node ---------------------------------------------------------------


def _import_serve(env_var: str, default_module: str, what: str, packages: tuple[str, ...]) -> Any:
    """`serve` of the server module; $env_var (MODULE or MODULE:FUNCTION) substitutes a stand-in."""
    import importlib

    module_name, _, attr = (os.environ.get(env_var) or default_module).partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr or "serve")
    except ModuleNotFoundError as e:
        if e.name in (module_name, *packages):
            raise CliError(f"the {what} is not part of this build ({module_name} is missing)") from None
        raise


def _parse_options(items: Sequence[str], cls: Any, what: str, flag: str = "--option") -> dict[str, Any]:
    """NAME=VALUE strings -> keyword arguments for the dataclass `cls` (typed by its defaults)."""
    import dataclasses

    # Fields without a plain default (identity, lists) are set by the node itself, not here.
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip().replace("-", "_"), text.strip()
        if not sep or not name:
            raise CliError(f"{flag} {item!r}: expected NAME=VALUE")
        if name not in defaults:
            known = ", ".join(sorted(n for n, v in defaults.items() if type(v) in (bool, int, float, str)))
            raise CliError(f"{flag} {name}: no such {what} option (known: {known})")
        kind = type(defaults[name])
        try:
            if kind is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                out[name] = text.lower() in ("1", "true", "yes")
            elif kind in (int, float, str):
                out[name] = kind(text)
            else:
                raise CliError(f"{flag} {name}: cannot be set from the command line")
        except ValueError:
            raise CliError(f"{flag} {name}={text}: expected a {kind.__name__}") from None
    return out


def _instance_options(args: argparse.Namespace) -> Any:
    if not args.option:
        return None
    try:
        from borealdb.nodes.instance.engine import InstanceOptions
    except ImportError:
        raise CliError("this build's instance node takes no options (borealdb.nodes.instance.engine.InstanceOptions is missing)") from None
    return InstanceOptions(**_parse_options(args.option, InstanceOptions, "instance"))


def _volume_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.volume_option:
        return None
    if args.role == "reader":
        raise CliUsageError("--volume-option is for the writer (a reader never writes to the volume)")
    from borealdb.errors import InvalidRequest
    from borealdb.nodes.volume import VolumeConfig

    overrides = _parse_options(args.volume_option, VolumeConfig, "volume", "--volume-option")
    try:  # the writer would fail the same way, later and less clearly
        VolumeConfig(volume_id="check", nodes=[], **overrides).validate()
    except InvalidRequest as exc:
        raise CliError(f"--volume-option: {exc}") from None
    return overrides


def cmd_instance_node(args: argparse.Namespace) -> int:
    if args.role == "reader" and not args.writer:
        raise CliUsageError("--role reader needs --writer HOST:PORT (the writer instance to follow)")
    if args.role == "writer" and args.writer:
        raise CliUsageError("--writer is for --role reader only")
    options = _instance_options(args)
    volume_overrides = _volume_options(args)
    from borealdb.protos import storage_pb2

    storage_nodes = [storage_pb2.StorageNodeInfo(node_id=i, az=az, address=a) for i, az, a in args.storage_nodes]
    serve = _import_serve(INSTANCE_SERVER_MODULE_ENV, "borealdb.nodes.instance.server", "instance node",
                          ("borealdb.nodes.instance",))
    _exit_with_parent()
    extra: dict[str, Any] = {"role": "reader", "writer": args.writer} if args.role == "reader" else {}
    if volume_overrides:  # only then: a server module without volume options still runs
        extra["volume_overrides"] = volume_overrides
    from borealdb import errors

    try:
        serve(args.node_id, args.az, args.listen, storage_nodes, volume_id=args.volume,
              metrics_listen=args.metrics_listen, options=options, **extra)
    except errors.Error as exc:  # e.g. QuorumLost at recovery: a message, not a traceback
        raise CliError(f"instance node {args.node_id}: {type(exc).__name__}: {exc}") from None
    return 0


# ---- up / down -------------------------------------------------------------------


def _print_nodes(cluster: Any) -> None:
    rows = [["NODE", "ROLE", "AZ", "ADDRESS", "METRICS", "PID", "LOG"]]
    for n in cluster.nodes:
        rows.append([n.node_id, n.role, n.az, n.address, n.metrics_address or "-", str(n.pid or "-"), str(n.log_path)])
    print(_table(rows))


def _previous_base_port(data: Path) -> int | None:
    """The base port of the cluster last started from `data`, if it used the default layout
    (storage nodes on BASE..BASE+5; the writer, if any, on BASE+10)."""
    from borealdb.nodes.cluster.local import (
        DEFAULT_INSTANCES,
        DEFAULT_TOPOLOGY,
        INSTANCE_PORT_OFFSET,
        UP_INSTANCES,
        ClusterError,
        load_cluster_state,
    )

    try:
        state = load_cluster_state(data)
    except ClusterError:
        return None

    def ports_of(records: Any) -> list[int] | None:
        ports = [n.address.rpartition(":")[2] for n in records]
        return [int(p) for p in ports] if all(p.isdigit() for p in ports) else None

    storage, instances = state.storage_records(), state.instance_records()
    ports = ports_of(storage)
    if [n.node_id for n in storage] != [i for i, _ in DEFAULT_TOPOLOGY] or not ports:
        return None
    if ports != list(range(ports[0], ports[0] + len(ports))):
        return None
    if instances:
        ids = [n.node_id for n in instances]
        if ids not in ([i for i, _, _ in DEFAULT_INSTANCES], [i for i, _, _ in UP_INSTANCES]):
            return None
        if ports_of(instances) != [ports[0] + INSTANCE_PORT_OFFSET + j for j in range(len(instances))]:
            return None
    return ports[0]


def cmd_up(args: argparse.Namespace) -> int:
    from borealdb.nodes.cluster.local import DEFAULT_BASE_PORT, ClusterError, LocalCluster, port_is_free

    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise CliError(f"--data {data}: exists and is not a directory")
    if args.base_port is None:
        args.base_port = _previous_base_port(data) or DEFAULT_BASE_PORT
    from borealdb.nodes.cluster.local import UP_INSTANCES

    cluster = LocalCluster(data, base_port=args.base_port, exit_with_parent=not args.detach,
                           instances=() if args.storage_only else UP_INSTANCES)
    try:
        cluster.check_not_running()
    except ClusterError as e:
        raise CliError(str(e)) from None
    n = len(cluster.nodes)
    n_storage = len(cluster.storage_nodes())
    writer = None if args.storage_only else cluster.writer()
    ports = [int(a.rpartition(":")[2]) for nd in cluster.nodes for a in (nd.address, nd.metrics_address) if a]
    busy = [p for p in ports if not port_is_free(p)]
    if busy:
        raise CliError(f"port(s) {', '.join(map(str, sorted(busy)))} on 127.0.0.1 already in use; choose another --base-port")

    stop = threading.Event()
    if not args.detach:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    readers = ", ".join(n.node_id for n in cluster.readers())
    what = f"{n_storage} storage nodes" + (f", then the writer {writer.node_id}," if writer else "") + (
        f" and the read replicas {readers}," if readers else "")
    print(f"starting {what} in {cluster.base_dir} ...", flush=True)
    try:
        cluster.start(timeout_s=args.timeout)
    except ClusterError as e:
        raise CliError(f"cluster did not start:\n{e}") from None
    _print_nodes(cluster)
    if writer is not None:
        data_flag = "" if args.data == DEFAULT_DATA else f" --data {args.data}"
        print(f"\nSQL: boreal sql{data_flag}   (or any client: boreal://{writer.address}/)")
    if args.detach:
        cluster.detach()
        print(f"\nall {n} nodes are ready. Status: boreal status --data {args.data}   Stop: boreal down --data {args.data}")
        return 0

    print(f"\nall {n} nodes are ready. Press Ctrl-C to stop them (or run: boreal down --data {args.data}).", flush=True)
    reported: set[str] = set()
    try:
        while not stop.wait(0.5):
            for node in cluster.nodes:
                if node.node_id not in reported and not node.is_running:
                    reported.add(node.node_id)
                    print(f"node {node.node_id} exited (code {node.returncode}); log: {node.log_path}", flush=True)
            if len(reported) == len(cluster.nodes):
                print("every node has exited", flush=True)
                break
    finally:
        print("stopping ...", flush=True)
        codes = cluster.stop_all()
        stopped = [k for k, v in codes.items() if v is not None]
        print(f"stopped {len(stopped)} node(s): {', '.join(stopped) or '-'}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from borealdb.nodes.cluster.local import ClusterError, ClusterStateMissing, stop_cluster

    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"no data directory {data}: nothing to stop (was the cluster started with another --data?)")
    try:
        results = stop_cluster(data, grace_s=args.grace)
    except ClusterStateMissing:
        print(f"no cluster in {data}: nothing to stop")
        return 0
    except ClusterError as e:
        raise CliError(str(e)) from None
    if not results:
        print(f"nothing running: the cluster in {data} is already stopped")
        return 0
    for node, outcome in results:
        how = "stopped" if outcome == "stopped" else "killed (did not stop within the grace period)"
        print(f"{node.node_id:<8} {node.role:<8} az {node.az}  {node.address:<21} pid {node.pid:<8} {how}")
    print(f"stopped {len(results)} node(s); data kept in {data}")
    return 0


# ---- status ----------------------------------------------------------------------


def _uptime(ms: int) -> str:
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def pgcl(scls: Sequence[int], replicas: int = 6, write_quorum: int = 4) -> int | None:
    """The 4th highest SCL of a PG's 6 segments. None if fewer than 4 are known."""
    if len(scls) < write_quorum:
        return None
    return sorted(scls, reverse=True)[write_quorum - 1]


def collect_status(data: Path, timeout_s: float = 1.0) -> dict[str, Any]:
    """Query every node of the cluster in `data`; a JSON-ready report."""
    import grpc

    from borealdb.nodes.cluster.local import INSTANCE_ROLES, load_cluster_state
    from borealdb.protos import sql_pb2, sql_pb2_grpc, storage_pb2, storage_pb2_grpc

    state = load_cluster_state(data)

    def ask(rec: Any) -> tuple[Any, Any, str | None]:
        try:
            with grpc.insecure_channel(rec.address) as ch:
                if rec.role in INSTANCE_ROLES:
                    resp = sql_pb2_grpc.InstanceStub(ch).InstanceStatus(sql_pb2.InstanceStatusRequest(), timeout=timeout_s)
                else:
                    resp = storage_pb2_grpc.StorageNodeStub(ch).NodeStatus(storage_pb2.NodeStatusRequest(), timeout=timeout_s)
            return rec, resp, None
        except grpc.RpcError as e:
            return rec, None, f"{e.code().name}"

    with ThreadPoolExecutor(max_workers=max(1, len(state.nodes))) as pool:
        answers = list(pool.map(ask, state.nodes))

    nodes = []
    pgs: dict[tuple[str, int], dict[str, Any]] = {}
    for rec, resp, err in answers:
        if rec.role in INSTANCE_ROLES:
            nodes.append({
                "node_id": rec.node_id,
                "az": rec.az,
                "role": rec.role,
                "address": rec.address,
                "url": f"boreal://{rec.address}/",
                "up": resp is not None,
                "error": err,
                "pid": rec.pid if rec.alive else None,
                "uptime_ms": resp.uptime_ms if resp else None,
                **{k: (getattr(resp, k) if resp else None)
                   for k in ("volume_id", "epoch", "vdl", "vcl", "sessions", "commits", "fenced", "read_only",
                             "replica_lag_lsn", "replica_lag_ms", "read_lsn", "writer_address", "stream_connected")},
                "replicas": [{"node_id": r.node_id, "az": r.az, "address": r.address, "applied_lsn": r.applied_lsn,
                              "lag_lsn": r.lag_lsn, "lag_ms": round(r.lag_ms, 2), "min_read_point": r.min_read_point}
                             for r in resp.replicas] if resp else None,
            })
            continue
        nodes.append({
            "node_id": rec.node_id,
            "az": rec.az,
            "role": rec.role,
            "address": rec.address,
            "up": resp is not None,
            "error": err,
            "pid": rec.pid if rec.alive else None,
            "uptime_ms": resp.uptime_ms if resp else None,
            "segments": len(resp.segments) if resp else None,
            "data_size_bytes": resp.data_size_bytes if resp else None,
        })
        if resp is None:
            continue
        for seg in resp.segments:
            pg = pgs.setdefault((seg.volume_id, seg.pg), {
                "volume_id": seg.volume_id, "pg": seg.pg, "members": [], "scl": {}, "epoch": {}, "vdl_hint": 0,
            })
            pg["scl"][rec.node_id] = seg.scl
            pg["epoch"][rec.node_id] = seg.epoch
            pg["vdl_hint"] = max(pg["vdl_hint"], seg.vdl_hint)
            for peer in seg.peers:
                if peer.node_id not in pg["members"]:
                    pg["members"].append(peer.node_id)
    pg_list = []
    for (_, _), pg in sorted(pgs.items()):
        scls = list(pg["scl"].values())
        pg["pgcl"] = pgcl(scls)
        pg["reporting"] = len(scls)
        pg["epochs"] = sorted(set(pg["epoch"].values()))
        pg_list.append(pg)
    return {"base_dir": str(state.base_dir), "nodes": nodes, "pgs": pg_list}


def format_status(report: dict[str, Any]) -> str:
    from borealdb.nodes.cluster.local import INSTANCE_ROLES

    def state_of(n: dict[str, Any]) -> str:
        return "up" if n["up"] else f"down ({n['error']})" if n["error"] else "down"

    def opt(v: Any, fmt: Any = str) -> str:
        return fmt(v) if v is not None else "-"

    storage = [n for n in report["nodes"] if n.get("role", "storage") not in INSTANCE_ROLES]
    instances = [n for n in report["nodes"] if n.get("role", "storage") in INSTANCE_ROLES]
    rows = [["NODE", "AZ", "ADDRESS", "STATE", "UPTIME", "SEGMENTS"]]
    for n in storage:
        rows.append([n["node_id"], n["az"], n["address"], state_of(n), opt(n["uptime_ms"], _uptime), opt(n["segments"])])
    out = [_table(rows)]
    if instances:
        rows = [["INSTANCE", "ROLE", "AZ", "ADDRESS", "STATE", "UPTIME", "EPOCH", "VDL", "SESSIONS", "REPLICA_LAG"]]
        for n in instances:
            role = n["role"] + (" (fenced)" if n.get("fenced") else "")
            lag = "-"
            if n["role"] == "reader" and n.get("up"):
                lag = f"{n.get('replica_lag_lsn') or 0} lsn / {n.get('replica_lag_ms') or 0:.1f} ms"
                if not n.get("stream_connected"):
                    lag += " (no stream)"
            rows.append([n["node_id"], role, n["az"], n["address"], state_of(n), opt(n["uptime_ms"], _uptime),
                         opt(n.get("epoch")), opt(n.get("vdl")), opt(n.get("sessions")), lag])
        out.append("")
        out.append(_table(rows))
    if not report["pgs"]:
        out.append("\nno segments yet (no volume has been created)")
        return "\n".join(out)
    node_ids = [n["node_id"] for n in storage]
    for pg in report["pgs"]:
        for m in pg["members"]:
            if m not in node_ids:
                node_ids.append(m)
    rows = [["VOLUME", "PG", "EPOCH", "PGCL", "VDL_HINT", *[f"SCL@{i}" for i in node_ids]]]
    for pg in report["pgs"]:
        epoch = "-".join(str(e) for e in (pg["epochs"][0], pg["epochs"][-1])) if len(pg["epochs"]) > 1 else str(pg["epochs"][0])
        if pg["pgcl"] is None:
            pgcl_text = "?"  # fewer than 4 segments answered
        elif pg["reporting"] < len(pg["members"] or [0] * 6):
            pgcl_text = f">={pg['pgcl']}"  # an unreachable segment may be ahead
        else:
            pgcl_text = str(pg["pgcl"])
        cells = []
        for i in node_ids:
            if i in pg["scl"]:
                cells.append(str(pg["scl"][i]))
            elif i in pg["members"]:
                cells.append("down")
            else:
                cells.append("")
        rows.append([pg["volume_id"], str(pg["pg"]), epoch, pgcl_text, str(pg["vdl_hint"]), *cells])
    out.append("")
    out.append(_table(rows))
    out.append("\nPGCL: 4th highest SCL of the 6 segments (>=: some segments did not answer; ?: fewer than 4 answered)")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    from borealdb.nodes.cluster.local import ClusterError

    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"no data directory {data}; start a cluster with: boreal up --data {data}")
    try:
        report = collect_status(data, args.timeout)
    except ClusterError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_status(report))
    down = [n["node_id"] for n in report["nodes"] if not n["up"]]
    if down and not args.json:
        print(f"\n{len(down)} of {len(report['nodes'])} node(s) down: {', '.join(down)}", file=sys.stderr)
    return 1 if down else 0


# ---- bench -----------------------------------------------------------------------


def cmd_bench(target: str, argv: list[str]) -> int:
    """target: "sql" (borealdb.nodes.instance.bench), "volume" (borealdb.nodes.volume.bench), "lag"
    (borealdb.nodes.instance.lag_bench: read replica lag and replica reads) or "rpc"
    (borealdb.nodes.rpc_bench: the CPU cost of a gRPC message)."""
    import importlib

    module = {"sql": "borealdb.nodes.instance.bench", "volume": "borealdb.nodes.volume.bench",
              "lag": "borealdb.nodes.instance.lag_bench", "rpc": "borealdb.nodes.rpc_bench"}[target]
    try:
        bench = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise CliError(f"the {target} benchmark is not part of this build ({module} is missing)") from None
        raise
    rc = bench.main(argv)
    return int(rc or 0)


# ---- sql -------------------------------------------------------------------------


def cmd_sql(args: argparse.Namespace) -> int:
    from borealdb import shell

    if args.sql_command is not None and args.sql_file is not None:
        raise CliError("give either -c or -f, not both")
    url = args.url or os.environ.get("BOREAL_URL") or None
    if url is None:
        from borealdb.nodes.cluster.local import ClusterError, load_cluster_state

        try:
            url = load_cluster_state(args.data).writer_address()
        except ClusterError as e:
            raise CliError(f"no URL given and $BOREAL_URL is not set: {e}") from None
    return shell.main(url, command=args.sql_command, file=args.sql_file, timer=args.timer)


# ---- main ------------------------------------------------------------------------


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "storage-node": cmd_storage_node, "sql": cmd_sql,
            "instance-node": cmd_instance_node}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # `boreal bench [volume] ...`: every later argument (--help included) belongs to the benchmark.
        if argv and argv[0] == "bench":
            if len(argv) >= 2 and argv[1] == "volume":
                return cmd_bench("volume", argv[2:])
            if len(argv) >= 2 and argv[1] == "lag":
                return cmd_bench("lag", argv[2:])
            if len(argv) >= 2 and argv[1] == "rpc":
                return cmd_bench("rpc", argv[2:])
            return cmd_bench("sql", argv[1:])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except CliUsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
