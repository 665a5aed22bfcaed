"""Run a borealdb cluster as local processes: the launcher behind `boreal up` and
the harness behind every integration test.

    with LocalCluster(tmp_path) as cluster:          # 6 storage nodes + writer i-a1, free ports
        cluster.node("s-a1").kill()
        cluster.node("s-a1").restart()
        infos = cluster.storage_node_infos()         # for the volume client
        cluster.writer().address                     # the SQL writer instance
    LocalCluster(tmp_path, instances=False)          # storage nodes only

Every node is a child process (`python -m borealdb.nodes.cli storage-node ...`, or
`... instance-node ...` for the writer and readers) in its own process group (so
the terminal's Ctrl-C reaches only the launcher; nodes ignore SIGHUP), logging to
`<data_dir>/node.log`. Nodes stay in the launcher's session on purpose: with the
kernel's autogroup scheduling (the default on most desktops and servers) every
session is a scheduling group of its own, and nine groups on a 2-core machine made a
lightly loaded replica wait up to 45-60 ms for a CPU while the others were busy
(`boreal bench lag`, 2 interleaved pairs: replica lag p99 at 1,000 writes/s 5.3 and
6.5 ms in one group, 14.1 and 31.3 ms in nine).
The trade-off: the cluster shares one CPU share with the rest of the launcher's
session (with `boreal up --detach`, the terminal's other jobs) against other sessions.
A paused node (SIGSTOP) whose launcher exits is resumed by the kernel (SIGHUP, which
nodes ignore, then SIGCONT): with exit_with_parent it then sees its parent gone and
exits; a detached paused node just runs on. Storage nodes are started (and waited
for) before instances, and instances are stopped before storage nodes. The cluster
writes `<base_dir>/cluster.json` (atomically, on every start and restart) so that
`boreal status`/`boreal down` and other processes can find it.

Cleanup: a LocalCluster used as a context manager stops every node on exit; an
atexit hook kills any child still running when the interpreter exits; and, unless
`exit_with_parent=False` (what `boreal up --detach` uses), each child holds the read
end of a pipe from its parent and terminates itself when the parent dies, even by
SIGKILL, so tests never leak processes.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import grpc

from borealdb.nodes.rpc import node_environment
from borealdb.protos import sql_pb2, sql_pb2_grpc, storage_pb2, storage_pb2_grpc

STATE_FILE = "cluster.json"
STATE_VERSION = 1
LOG_FILE = "node.log"
DEFAULT_BASE_PORT = 7101
METRICS_PORT_OFFSET = 100  # node i: gRPC on base+i, metrics on base+100+i
INSTANCE_PORT_OFFSET = 10  # instance j: gRPC on base+10+j (the writer: base+10), metrics on base+110+j
STORAGE_ROLE = "storage"
WRITER_ROLE = "writer"
READER_ROLE = "reader"
INSTANCE_ROLES = (WRITER_ROLE, READER_ROLE)
DEFAULT_VOLUME = "main"
DEFAULT_TOPOLOGY: tuple[tuple[str, str], ...] = (
    ("s-a1", "a"),
    ("s-a2", "a"),
    ("s-b1", "b"),
    ("s-b2", "b"),
    ("s-c1", "c"),
    ("s-c2", "c"),
)
# The instance nodes LocalCluster adds by default (instances=True): (node_id, az, role).
DEFAULT_INSTANCES: tuple[tuple[str, str, str], ...] = (("i-a1", "a", WRITER_ROLE),)
# What `boreal up` starts: the writer in AZ a and a read replica in each of AZs b and c.
UP_INSTANCES: tuple[tuple[str, str, str], ...] = (
    ("i-a1", "a", WRITER_ROLE), ("i-b1", "b", READER_ROLE), ("i-c1", "c", READER_ROLE))
# The child reads this fd; EOF means the parent died and the child terminates itself.
PARENT_PIPE_ENV = "BOREAL_PARENT_PIPE_FD"


class ClusterError(Exception):
    """A launcher failure with a message fit for a user (no traceback needed)."""


class NodeStartError(ClusterError):
    """A node exited before it was ready, or did not become ready in time."""


class ClusterStateMissing(ClusterError):
    """No cluster.json in the data directory."""


# ---- ports -----------------------------------------------------------------------


def _ephemeral_floor() -> int:
    """Lowest port the kernel hands out for outgoing connections (32768 on Linux by default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out by free_port() in this process, so two calls never return the same one.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_PORT_FLOOR = 20000


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, below the kernel's range for outgoing connections.

    Ports from that range (what binding to port 0 returns) can be taken by any
    outgoing connection - gossip, gRPC clients - between this check and the node's
    bind; ports below it are only taken by listeners."""
    ceiling = _ephemeral_floor()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(_PORT_FLOOR, ceiling)
        with _handed_out_lock:
            if port in _handed_out:
                continue
            if port_is_free(port, host):
                _handed_out.add(port)
                return port
    raise ClusterError(f"found no free port on {host} in [{_PORT_FLOOR}, {ceiling})")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on host:port now. Like gRPC servers, bind with
    SO_REUSEADDR: connections of a stopped node in TIME_WAIT do not make the port busy,
    a socket listening on it does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def find_free_base_port(count: int = INSTANCE_PORT_OFFSET + len(UP_INSTANCES), host: str = "127.0.0.1",
                        attempts: int = 200) -> int:
    """A base port B such that B..B+count-1 and the metrics ports B+100.. are free
    (the default count covers what `boreal up` starts: storage B..B+5, writer B+10, readers B+11, B+12)."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_PORT_FLOOR, _ephemeral_floor() - METRICS_PORT_OFFSET - count)
        ports = [base + i for i in range(count)] + [base + METRICS_PORT_OFFSET + i for i in range(count)]
        if all(port_is_free(p, host) for p in ports):
            return base
    raise ClusterError(f"found no block of {count} free ports on {host}")


# ---- processes --------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def is_boreal_process(pid: int, node_id: str) -> bool:
    """True if `pid` is alive and is the borealdb node `node_id` (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"borealdb.nodes.cli" in args and node_id.encode() in args


def wait_pid_gone(pid: int, timeout_s: float) -> bool:
    """Wait until a process that is not our child is gone. True if it is."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(pid: int, sig: int) -> None:
    """Signal the node's process group (it leads its own), or the pid alone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate_pid(pid: int, grace_s: float = 10.0) -> str:
    """SIGTERM a node (its group), SIGKILL it after `grace_s`. Returns 'stopped' or 'killed'."""
    _signal_group(pid, signal.SIGTERM)
    _signal_group(pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
    if wait_pid_gone(pid, grace_s):
        return "stopped"
    _signal_group(pid, signal.SIGKILL)
    wait_pid_gone(pid, 5.0)
    return "killed"


def tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# Every Node whose process may still run; the atexit hook kills what is left.
_live_nodes: set["Node"] = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        nodes = list(_live_nodes)
    for node in nodes:
        try:
            node.kill()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# ---- nodes ------------------------------------------------------------------------


@dataclass
class NodeSpec:
    """What to run. `listen`/`data_dir` left None are filled in by LocalCluster.

    role: "storage", or "writer"/"reader" for an instance node. An instance has no data
    of its own (`data_dir` holds its log); it reaches the volume `volume_id` through
    `storage_nodes`, which LocalCluster fills in from its storage nodes when empty."""

    node_id: str
    az: str
    role: str = STORAGE_ROLE
    listen: str | None = None  # "127.0.0.1:PORT"
    data_dir: Path | None = None
    metrics_listen: str | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)
    storage_nodes: Sequence[storage_pb2.StorageNodeInfo] = field(default_factory=tuple)  # instances only
    volume_id: str = DEFAULT_VOLUME  # instances only
    writer: str | None = None  # readers only: the writer's HOST:PORT (LocalCluster fills it in)

    @property
    def is_instance(self) -> bool:
        return self.role in INSTANCE_ROLES

    def command(self) -> list[str]:
        if self.role != STORAGE_ROLE and not self.is_instance:
            raise ClusterError(f"node {self.node_id}: unknown role {self.role!r} (storage, writer or reader)")
        if not self.listen or self.data_dir is None:
            raise ClusterError(f"node {self.node_id}: listen address and data dir are required")
        if self.is_instance:
            return self._instance_command()
        cmd = [
            sys.executable,
            "-m",
            "borealdb.nodes.cli",
            "storage-node",
            "--id",
            self.node_id,
            "--az",
            self.az,
            "--listen",
            self.listen,
            "--data",
            str(self.data_dir),
        ]
        if self.metrics_listen:
            cmd += ["--metrics-listen", self.metrics_listen]
        return cmd + list(self.extra_args)

    def _instance_command(self) -> list[str]:
        if not self.storage_nodes:
            raise ClusterError(f"node {self.node_id}: an instance node needs storage nodes")
        cmd = [
            sys.executable,
            "-m",
            "borealdb.nodes.cli",
            "instance-node",
            "--id",
            self.node_id,
            "--az",
            self.az,
            "--role",
            self.role,
            "--listen",
            self.listen,
            "--storage-nodes",
            format_storage_nodes(self.storage_nodes),
            "--volume",
            self.volume_id,
        ]
        if self.metrics_listen:
            cmd += ["--metrics-listen", self.metrics_listen]
        if self.role == READER_ROLE:
            if not self.writer:
                raise ClusterError(f"node {self.node_id}: a reader needs the writer's address")
            cmd += ["--writer", self.writer]
        return cmd + list(self.extra_args)


def format_storage_nodes(infos: Iterable[storage_pb2.StorageNodeInfo]) -> str:
    """The --storage-nodes value of `boreal instance-node`: ID@AZ@HOST:PORT,..."""
    return ",".join(f"{i.node_id}@{i.az}@{i.address}" for i in infos)


class Node:
    """One node process. Not thread-safe: drive a node from one thread at a time."""

    def __init__(self, spec: NodeSpec, *, exit_with_parent: bool = True, env: dict[str, str] | None = None,
                 on_change=None):
        self.spec = spec
        self.exit_with_parent = exit_with_parent
        self.env = env
        self._proc: subprocess.Popen | None = None
        self._pipe_w: int | None = None
        self._on_change = on_change  # called after start/stop so the cluster rewrites its state
        self.started_at: float | None = None

    # -- identity
    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def az(self) -> str:
        return self.spec.az

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def is_instance(self) -> bool:
        """A writer or reader instance node (not a storage node)."""
        return self.spec.is_instance

    @property
    def address(self) -> str:
        return self.spec.listen or ""

    @property
    def metrics_address(self) -> str | None:
        return self.spec.metrics_listen

    @property
    def data_dir(self) -> Path:
        assert self.spec.data_dir is not None
        return Path(self.spec.data_dir)

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        """The process id while the process runs (or is paused), else None."""
        return self._proc.pid if self.is_running else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def info(self) -> storage_pb2.StorageNodeInfo:
        return storage_pb2.StorageNodeInfo(node_id=self.node_id, az=self.az, address=self.address)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"Node({self.node_id}, az={self.az}, {self.address}, {state})"

    # -- lifecycle
    def start(self) -> None:
        """Spawn the process (returns at once; see wait_ready)."""
        if self.is_running:
            raise ClusterError(f"node {self.node_id} is already running (pid {self.pid})")
        self._reap()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = node_environment(dict(os.environ if self.env is None else self.env))
        env.pop(PARENT_PIPE_ENV, None)
        pass_fds: tuple[int, ...] = ()
        pipe_r = None
        if self.exit_with_parent:
            pipe_r, self._pipe_w = os.pipe()
            env[PARENT_PIPE_ENV] = str(pipe_r)
            pass_fds = (pipe_r,)
        with open(self.log_path, "ab") as log:
            log.write(f"--- boreal launcher: starting {self.node_id} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.spec.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=0,  # own process group, the launcher's session (module docstring)
                    pass_fds=pass_fds,
                    env=env,
                    cwd=str(self.data_dir),
                )
            finally:
                if pipe_r is not None:
                    os.close(pipe_r)
        self.started_at = time.time()
        with _live_lock:
            _live_nodes.add(self)
        if self._on_change:
            self._on_change()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def node_status(self, timeout_s: float = 2.0) -> storage_pb2.NodeStatusResponse:
        """One NodeStatus RPC (raises grpc.RpcError if the node does not answer)."""
        with self.channel() as ch:
            return storage_pb2_grpc.StorageNodeStub(ch).NodeStatus(storage_pb2.NodeStatusRequest(), timeout=timeout_s)

    def instance_status(self, timeout_s: float = 2.0) -> sql_pb2.InstanceStatusResponse:
        """One Instance/InstanceStatus RPC to an instance node (raises grpc.RpcError)."""
        with self.channel() as ch:
            return sql_pb2_grpc.InstanceStub(ch).InstanceStatus(sql_pb2.InstanceStatusRequest(), timeout=timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> storage_pb2.NodeStatusResponse | sql_pb2.InstanceStatusResponse:
        """Poll NodeStatus (a storage node) or InstanceStatus (an instance, which answers once
        it has recovered the volume) until the node answers as itself. Raises NodeStartError if
        the process exits first (with the tail of its log) or the deadline passes."""
        if self._proc is None:
            raise NodeStartError(f"node {self.node_id} was never started")
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        with self.channel() as ch:
            if self.is_instance:
                instance_stub = sql_pb2_grpc.InstanceStub(ch)

                def probe(t: float):
                    return instance_stub.InstanceStatus(sql_pb2.InstanceStatusRequest(), timeout=t)
            else:
                storage_stub = storage_pb2_grpc.StorageNodeStub(ch)

                def probe(t: float):
                    return storage_stub.NodeStatus(storage_pb2.NodeStatusRequest(), timeout=t)
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._forget()
                    raise NodeStartError(
                        f"node {self.node_id} exited with code {code} before it was ready; "
                        f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NodeStartError(
                        f"node {self.node_id} at {self.address} not ready after {timeout_s:.0f}s ({last_error}); "
                        f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                    )
                try:
                    resp = probe(min(1.0, max(0.05, remaining)))
                    if self.is_instance and not resp.node_id:
                        last_error = "answered without its node id (still starting)"
                        resp = None
                except grpc.RpcError as e:
                    last_error = f"{e.code().name}: {e.details()}"
                    resp = None
                if resp is None:
                    # Wait on the process itself: wakes at once if it exits.
                    try:
                        self._proc.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                    except subprocess.TimeoutExpired:
                        pass
                    continue
                if resp.node_id and resp.node_id != self.node_id:
                    raise NodeStartError(
                        f"{self.address} answered as node {resp.node_id!r}, not {self.node_id!r}: "
                        "another server holds that port"
                    )
                return resp

    def kill(self) -> None:
        """SIGKILL the node's process group and reap it (a crash)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._forget()

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`. Returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGTERM)
            _signal_group(self._proc.pid, signal.SIGCONT)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        code = self._proc.returncode
        self._forget()
        return code

    def pause(self) -> None:
        """SIGSTOP: the process stays, but answers nothing (a stall, not a crash)."""
        self._require_running()
        _signal_group(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        self._require_running()
        _signal_group(self._proc.pid, signal.SIGCONT)

    def restart(self, *, wait: bool = True, timeout_s: float = 30.0, grace_s: float = 10.0) -> None:
        """stop() (SIGTERM) then start() on the same address and data dir."""
        self.stop(grace_s)
        self.start()
        if wait:
            self.wait_ready(timeout_s)

    def detach(self) -> None:
        """Let the process outlive this Python process (no atexit kill)."""
        if self.exit_with_parent:
            raise ClusterError(f"node {self.node_id} was started with exit_with_parent=True: it cannot outlive this process")
        with _live_lock:
            _live_nodes.discard(self)

    # -- internals
    def _require_running(self) -> None:
        if not self.is_running:
            raise ClusterError(f"node {self.node_id} is not running")

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._forget()

    def _forget(self) -> None:
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
        with _live_lock:
            _live_nodes.discard(self)
        if self._on_change:
            self._on_change()


# ---- state file -------------------------------------------------------------------


@dataclass
class NodeRecord:
    """One node as recorded in cluster.json."""

    node_id: str
    az: str
    role: str
    address: str
    pid: int | None
    data_dir: str
    log_path: str
    metrics_address: str | None = None
    started_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.pid is not None and is_boreal_process(self.pid, self.node_id)

    def info(self) -> storage_pb2.StorageNodeInfo:
        return storage_pb2.StorageNodeInfo(node_id=self.node_id, az=self.az, address=self.address)


@dataclass
class ClusterState:
    base_dir: Path
    nodes: list[NodeRecord]
    launcher_pid: int | None = None
    detached: bool = False

    def storage_node_infos(self) -> list[storage_pb2.StorageNodeInfo]:
        return [n.info() for n in self.nodes if n.role == "storage"]

    def storage_records(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.role not in INSTANCE_ROLES]

    def instance_records(self) -> list[NodeRecord]:
        """The writer and readers, in topology order."""
        return [n for n in self.nodes if n.role in INSTANCE_ROLES]

    def node(self, node_id: str) -> NodeRecord:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def running(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.alive]

    def writer_address(self) -> str:
        """The address of the running writer instance; ClusterError if there is none."""
        writers = [n for n in self.nodes if n.role == "writer"]
        if not writers:
            raise ClusterError(f"the cluster in {self.base_dir} has no writer instance")
        for n in writers:
            if n.alive:
                return n.address
        raise ClusterError(f"the writer of the cluster in {self.base_dir} is not running; start it with: boreal up")


def state_path(base_dir: str | os.PathLike) -> Path:
    return Path(base_dir) / STATE_FILE


def load_cluster_state(base_dir: str | os.PathLike) -> ClusterState:
    """Read `<base_dir>/cluster.json`. Raises ClusterStateMissing / ClusterError."""
    path = state_path(base_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterStateMissing(f"no cluster in {Path(base_dir)} (no {STATE_FILE}); start one with: boreal up") from None
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot read {path}: {e}") from None
    if raw.get("version") != STATE_VERSION:
        raise ClusterError(f"{path}: unsupported state version {raw.get('version')!r}")
    try:
        nodes = [NodeRecord(**n) for n in raw["nodes"]]
    except (KeyError, TypeError) as e:
        raise ClusterError(f"{path}: malformed node list: {e}") from None
    return ClusterState(Path(base_dir), nodes, raw.get("launcher_pid"), bool(raw.get("detached")))


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- cluster ----------------------------------------------------------------------


TopologyEntry = NodeSpec | tuple[str, str] | tuple[str, str, str]


def _to_spec(entry: TopologyEntry) -> NodeSpec:
    if isinstance(entry, NodeSpec):
        return entry
    if len(entry) == 2:
        return NodeSpec(entry[0], entry[1])
    if len(entry) == 3:
        return NodeSpec(entry[0], entry[1], role=entry[2])
    raise ClusterError(f"topology entry {entry!r}: expected NodeSpec, (node_id, az) or (node_id, az, role)")


class LocalCluster:
    """A set of local node processes sharing `base_dir` (one sub-directory per node).

    topology: NodeSpecs, (node_id, az) pairs (storage nodes) or (node_id, az, role) triples;
      default: s-a1..s-c2, 2 per AZ a/b/c.
    instances: instance nodes added after `topology`: True (default) adds the writer i-a1
      in AZ a; False/None adds none (a storage-only cluster); or an iterable of NodeSpecs /
      (node_id, az, role) triples. Instances connect to every storage node of the cluster.
    base_port: storage node i listens on base_port+i, instance j (the writer first) on
      base_port+10+j; metrics on the gRPC port+100. None picks free ports from the OS
      (what tests use).
    metrics: False starts no metrics endpoints.
    exit_with_parent: children terminate when this process dies (False for `up --detach`).
    storage_args: extra command-line flags for every storage node (e.g. ["--gossip-interval-s", "0.1"]).
    instance_args: extra command-line flags for every instance node (e.g. ["--option", "x=1"]).
    volume_id: the volume the instances serve (default "main").
    """

    def __init__(
        self,
        base_dir: str | os.PathLike,
        topology: Iterable[TopologyEntry] | None = None,
        *,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        metrics: bool = True,
        exit_with_parent: bool = True,
        storage_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        instances: bool | Iterable[NodeSpec | tuple[str, str, str]] | None = True,
        instance_args: Sequence[str] = (),
        volume_id: str = DEFAULT_VOLUME,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.host = host
        self.exit_with_parent = exit_with_parent
        self._state_lock = threading.Lock()
        self._nodes: dict[str, Node] = {}
        specs = [_to_spec(t) for t in (topology or DEFAULT_TOPOLOGY)]
        if instances is True:
            instances = DEFAULT_INSTANCES
        specs += [_to_spec(t) for t in (instances or ())]
        if len({s.node_id for s in specs}) != len(specs):
            raise ClusterError("duplicate node ids in topology")
        n_storage = sum(1 for s in specs if not s.is_instance)
        if base_port is not None and n_storage > INSTANCE_PORT_OFFSET and any(s.is_instance for s in specs):
            raise ClusterError(f"with a base port, at most {INSTANCE_PORT_OFFSET} storage nodes fit below the instance ports")
        storage_i = instance_i = 0
        for spec in specs:
            if spec.is_instance:
                offset = INSTANCE_PORT_OFFSET + instance_i
                instance_i += 1
            else:
                offset = storage_i
                storage_i += 1
            if spec.listen is None:
                port = base_port + offset if base_port is not None else free_port(host)
                spec.listen = f"{host}:{port}"
            if spec.metrics_listen is None and metrics:
                port = base_port + METRICS_PORT_OFFSET + offset if base_port is not None else free_port(host)
                spec.metrics_listen = f"{host}:{port}"
            if spec.data_dir is None:
                spec.data_dir = self.base_dir / spec.node_id
            if storage_args and spec.role == STORAGE_ROLE:
                spec.extra_args = [*spec.extra_args, *storage_args]
            if instance_args and spec.is_instance:
                spec.extra_args = [*spec.extra_args, *instance_args]
        storage_infos = [storage_pb2.StorageNodeInfo(node_id=s.node_id, az=s.az, address=s.listen)
                         for s in specs if not s.is_instance]
        for spec in specs:
            if spec.is_instance:
                if not spec.storage_nodes:
                    if not storage_infos:
                        raise ClusterError(f"instance {spec.node_id}: the cluster has no storage nodes")
                    spec.storage_nodes = list(storage_infos)
                if volume_id != DEFAULT_VOLUME and spec.volume_id == DEFAULT_VOLUME:
                    spec.volume_id = volume_id
                if spec.role == READER_ROLE and not spec.writer:
                    writers = [w.listen for w in specs if w.role == WRITER_ROLE]
                    if not writers:
                        raise ClusterError(f"reader {spec.node_id}: the cluster has no writer to follow")
                    spec.writer = writers[0]
            self._nodes[spec.node_id] = Node(spec, exit_with_parent=exit_with_parent, env=env, on_change=self.write_state)

    # -- lookup
    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in this cluster (have {', '.join(self._nodes)})") from None

    def nodes_in_az(self, az: str) -> list[Node]:
        return [n for n in self._nodes.values() if n.az == az]

    def storage_nodes(self) -> list[Node]:
        return [n for n in self._nodes.values() if n.role == "storage"]

    def instance_nodes(self) -> list[Node]:
        """The writer and readers, in topology order."""
        return [n for n in self._nodes.values() if n.is_instance]

    def writer(self) -> Node:
        """The writer instance node (ClusterError if the cluster has none)."""
        for n in self._nodes.values():
            if n.role == WRITER_ROLE:
                return n
        raise ClusterError(f"the cluster in {self.base_dir} has no writer (was it made with instances=False?)")

    def readers(self) -> list[Node]:
        """The read replica instance nodes, in topology order."""
        return [n for n in self._nodes.values() if n.role == READER_ROLE]

    def writer_url(self) -> str:
        """boreal://HOST:PORT/ of the writer."""
        return f"boreal://{self.writer().address}/"

    def storage_node_infos(self) -> list[storage_pb2.StorageNodeInfo]:
        return [n.info() for n in self.storage_nodes()]

    def running_nodes(self) -> list[Node]:
        return [n for n in self._nodes.values() if n.is_running]

    @property
    def state_path(self) -> Path:
        return state_path(self.base_dir)

    # -- lifecycle
    def check_not_running(self) -> None:
        """Raise ClusterError if cluster.json in base_dir names live nodes."""
        try:
            state = load_cluster_state(self.base_dir)
        except ClusterStateMissing:
            return
        except ClusterError:
            return  # unreadable state: it will be overwritten
        live = [n for n in state.running() if n.node_id not in self._nodes or not self._nodes[n.node_id].is_running]
        if live:
            names = ", ".join(f"{n.node_id} (pid {n.pid})" for n in live)
            raise ClusterError(f"a cluster from {self.base_dir} is already running: {names}; stop it with: boreal down --data {self.base_dir}")

    def _select(self, roles: Iterable[str] | None) -> list[Node]:
        if roles is None:
            return list(self._nodes.values())
        roles = set(roles)
        return [n for n in self._nodes.values() if n.role in roles]

    def start_all(self, roles: Iterable[str] | None = None) -> None:
        """Spawn every node (of `roles`, default all) that is not running; returns at once
        (see wait_all_ready). start() is what starts storage before instances."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.check_not_running()
        # Spawning is quick; readiness is what takes time, and wait_all_ready waits in parallel.
        for node in self._select(roles):
            if not node.is_running:
                node.start()
        self.write_state()

    def wait_all_ready(self, timeout_s: float = 60.0, roles: Iterable[str] | None = None) -> None:
        """Wait for every running node (of `roles`, default all) in parallel; on failure raise
        one error naming each failed node."""
        nodes = [n for n in self._select(roles) if n.is_running]
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            futures = {n.node_id: pool.submit(n.wait_ready, timeout_s) for n in nodes}
            errors = []
            for node_id, fut in futures.items():
                try:
                    fut.result()
                except ClusterError as e:
                    errors.append(str(e))
        if errors:
            raise NodeStartError("\n\n".join(errors))

    def start(self, timeout_s: float = 60.0) -> "LocalCluster":
        """Start the storage nodes and wait until they are ready, then the instances (whose
        start-up recovers the volume) and wait for them; each phase gets `timeout_s`. On
        failure every node is stopped again."""
        try:
            self.start_all(roles=(STORAGE_ROLE,))
            self.wait_all_ready(timeout_s, roles=(STORAGE_ROLE,))
            if self.instance_nodes():
                self.start_all(roles=INSTANCE_ROLES)
                self.wait_all_ready(timeout_s, roles=INSTANCE_ROLES)
        except BaseException:
            self.kill_all()
            raise
        return self

    def stop_all(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """Stop the instances, then the storage nodes: SIGTERM each group at once, SIGKILL what
        is left of it after `grace_s`. Returns exit codes (None: was not started)."""
        codes: dict[str, int | None] = {}
        for group in (self.instance_nodes(), [n for n in self._nodes.values() if not n.is_instance]):
            running = [n for n in group if n.is_running]
            for n in running:
                _signal_group(n.pid, signal.SIGTERM)
                _signal_group(n.pid, signal.SIGCONT)
            deadline = time.monotonic() + grace_s
            for n in running:
                try:
                    n._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for n in group:
                codes[n.node_id] = n.stop(grace_s=0) if n._proc is not None else None
        self.write_state()
        return {n: codes[n] for n in self._nodes}

    def kill_all(self) -> None:
        for n in self._nodes.values():
            n.kill()
        self.write_state()

    def detach(self) -> None:
        """Leave the nodes running when this process exits (for `boreal up --detach`)."""
        for n in self._nodes.values():
            n.detach()
        self.write_state(detached=True)

    def __enter__(self) -> "LocalCluster":
        if not self.running_nodes():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- state
    def write_state(self, detached: bool | None = None) -> None:
        if detached is not None:
            self._detached = detached
        nodes = [
            NodeRecord(
                node_id=n.node_id,
                az=n.az,
                role=n.role,
                address=n.address,
                pid=n.pid if n.is_running else None,
                data_dir=str(n.data_dir),
                log_path=str(n.log_path),
                metrics_address=n.metrics_address,
                started_at=n.started_at if n.is_running else None,
            ).__dict__
            for n in self._nodes.values()
        ]
        doc = {
            "version": STATE_VERSION,
            "base_dir": str(self.base_dir),
            "launcher_pid": os.getpid(),
            "detached": getattr(self, "_detached", False),
            "nodes": nodes,
        }
        with self._state_lock:
            if not self.base_dir.is_dir():
                return
            _write_atomic(self.state_path, json.dumps(doc, indent=2) + "\n")


def stop_cluster(base_dir: str | os.PathLike, grace_s: float = 10.0) -> list[tuple[NodeRecord, str]]:
    """Stop the nodes named in `<base_dir>/cluster.json` from any process (what `boreal down` does).

    Instances (writer, readers) are stopped first, then the storage nodes, each group with
    `grace_s`. Returns (node, outcome) for each node that was running, in that order;
    outcome is 'stopped' or 'killed'. Raises ClusterStateMissing if there is no state file."""
    state = load_cluster_state(base_dir)
    results = []
    for group in (state.instance_records(), state.storage_records()):
        live = [n for n in group if n.alive]
        for n in live:
            _signal_group(n.pid, signal.SIGTERM)
            _signal_group(n.pid, signal.SIGCONT)
        deadline = time.monotonic() + grace_s
        for n in live:
            if wait_pid_gone(n.pid, max(0.0, deadline - time.monotonic())):
                results.append((n, "stopped"))
            else:
                results.append((n, terminate_pid(n.pid, grace_s=0)))
    # Record that nothing runs any more.
    raw = json.loads(state_path(base_dir).read_text())
    for n in raw["nodes"]:
        n["pid"] = None
        n["started_at"] = None
    _write_atomic(state_path(base_dir), json.dumps(raw, indent=2) + "\n")
    return results


__all__ = [
    "ClusterError",
    "ClusterState",
    "ClusterStateMissing",
    "DEFAULT_BASE_PORT",
    "DEFAULT_INSTANCES",
    "UP_INSTANCES",
    "DEFAULT_TOPOLOGY",
    "DEFAULT_VOLUME",
    "INSTANCE_PORT_OFFSET",
    "INSTANCE_ROLES",
    "LocalCluster",
    "Node",
    "NodeRecord",
    "NodeSpec",
    "NodeStartError",
    "find_free_base_port",
    "format_storage_nodes",
    "free_port",
    "load_cluster_state",
    "stop_cluster",
]
