#!/usr/bin/env python3
"""Faults for the borealdb containers of docker-compose.yml, and a chaos run that checks
that no acknowledged write is lost.

Run it with the repository's virtual environment (it uses the borealdb client), from
anywhere; PROJECT is the compose project (-p of docker-compose; default
$COMPOSE_PROJECT_NAME, else the name of the repository's directory, as docker-compose does):

    .venv/bin/python deploy/chaos.py status               # `boreal status` of the compose cluster
    .venv/bin/python deploy/chaos.py kill s-b1            # docker kill: a crash (no restart by itself)
    .venv/bin/python deploy/chaos.py start s-b1           # docker start, then wait until healthy
    .venv/bin/python deploy/chaos.py stop s-b1 s-b2       # docker stop: SIGTERM, SIGKILL after 15 s
    .venv/bin/python deploy/chaos.py pause s-c1           # docker pause (frozen: answers nothing)
    .venv/bin/python deploy/chaos.py unpause s-c1
    .venv/bin/python deploy/chaos.py cut-az c             # disconnect AZ c's nodes from the `storage` network
    .venv/bin/python deploy/chaos.py heal-az c            # reconnect them (with their service-name alias)
    .venv/bin/python deploy/chaos.py heal                 # undo every fault above, wait until all healthy
    .venv/bin/python deploy/chaos.py run                  # writer load + a fault schedule + checks
    .venv/bin/python deploy/chaos.py -p other run --faults stop-az,cut-az --hold-s 10

`cut-az AZ` disconnects the AZ's storage nodes and its read replica from `storage`, the
network between the AZs: they still reach each other over their AZ's own network, and
nothing else. For AZ a (the writer's AZ) only the storage nodes are cut (`--with-writer`
cuts the writer too, which then has no write quorum: borealdb has no writer failover).

`run` starts --writers client threads inserting rows into `chaos_rows` on the writer as
fast as it answers (or at --rate rows/s in total), and records which inserts were
acknowledged. Then, for each fault of --faults in turn: inject it, hold it --hold-s
seconds, heal it, and wait until every storage segment has caught up with the writer
(gossip repair) and every node is healthy. Faults:

    pause-storage   docker pause one storage node (random)
    kill-storage    docker kill one storage node, then docker start it
    stop-az         docker stop both storage nodes of one AZ (random), then start them
    cut-az          cut-az of AZ b or c (random), then heal-az
    pause-reader    docker pause one read replica
    kill-reader     docker kill one read replica, then start it
    kill-writer     docker kill the writer i-a1, then start it (it recovers the volume)

Finally it stops the load and checks: every acknowledged row is on the writer; both read
replicas show the same rows as the writer; and no insert failed except during a fault
that takes the writer away (kill-writer; cut-az with --with-writer). It prints a line per
fault (commits and client errors while it lasted) and exits 0 if all checks pass, 1 if
not. --seed makes the random choices repeatable.

`status` writes a cluster.json for the project (storage nodes at their container
addresses, instances at their 127.0.0.1 ports) into --data (default
$TMPDIR/boreal-compose-PROJECT) and runs `boreal status --data DIR` on it; that directory
can be passed to `boreal status --data` later too.

Exit codes: 0 success, 1 failure (the message says why), 2 bad arguments.
tests/deploy/ imports this file: ComposeProject and WriterLoad are its building blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
AZS = ("a", "b", "c")
STORAGE_SERVICES = {"a": ("s-a1", "s-a2"), "b": ("s-b1", "s-b2"), "c": ("s-c1", "s-c2")}
WRITER = "i-a1"
READERS = ("i-b1", "i-c1")
INSTANCE_SERVICES = {"a": (WRITER,), "b": ("i-b1",), "c": ("i-c1",)}
ALL_STORAGE = tuple(s for az in AZS for s in STORAGE_SERVICES[az])
ALL_SERVICES = ALL_STORAGE + (WRITER,) + READERS
STORAGE_PORT = 7101
INSTANCE_PORT = 7111
# Host ports of the instances (docker-compose.yml reads these variables).
PORT_ENV = {"i-a1": "BOREAL_I_A1_PORT", "i-b1": "BOREAL_I_B1_PORT", "i-c1": "BOREAL_I_C1_PORT"}
FAULTS = ("pause-storage", "kill-storage", "stop-az", "cut-az", "pause-reader", "kill-reader", "kill-writer")
DEFAULT_FAULTS = ("pause-storage", "kill-storage", "stop-az", "cut-az", "kill-writer")
TABLE = "chaos_rows"


class ChaosError(Exception):
    """A failure reported as `chaos: error: ...` (exit 1)."""


def az_of(service: str) -> str:
    return service.split("-")[1][0]


def default_project() -> str:
    """What docker-compose 1.29 uses without -p: $COMPOSE_PROJECT_NAME, else the directory name."""
    name = os.environ.get("COMPOSE_PROJECT_NAME") or REPO.name
    return re.sub(r"[^-_a-z0-9]", "", name.lower())


# ---- docker -------------------------------------------------------------------------


def run(cmd: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), capture_output=capture, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise ChaosError(f"{cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise ChaosError(f"{' '.join(cmd)}: no answer after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
        raise ChaosError(f"{' '.join(cmd)} exited with {proc.returncode}" + (f": {detail[-2000:]}" if detail else ""))
    return proc


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check).stdout.strip()


# runc freezes a container by asking every task of its cgroup to stop, and gives up
# ("unable to freeze") if some have not within its short wait: seen here on 3 of 9
# pauses of a reader while the load kept both cores busy. The container is left
# running, so the fault is simply tried again.
PAUSE_ATTEMPTS = 5


def docker_pause(container: str) -> None:
    for attempt in range(1, PAUSE_ATTEMPTS + 1):
        try:
            docker("pause", container)
            return
        except ChaosError as e:
            if "unable to freeze" not in str(e) or attempt == PAUSE_ATTEMPTS:
                raise
            print(f"chaos: docker pause {container[:12]}: unable to freeze (attempt {attempt}); trying again",
                  file=sys.stderr, flush=True)
            time.sleep(0.2 * attempt)


def docker_unavailable_reason() -> str | None:
    """None if a Docker engine answers (`docker info`), else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        err = (proc.stderr or "").strip().splitlines()
        return f"no Docker engine reachable (`docker info` failed: {err[-1] if err else proc.returncode})"
    return None


def compose_command() -> list[str] | None:
    """docker-compose (v1), else `docker compose` (v2), else None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


# ---- the compose project ---------------------------------------------------------------


class ComposeProject:
    """The containers of one docker-compose project of docker-compose.yml.

    `env` is added to os.environ for docker-compose (BASE_IMAGE, BOREAL_*_PORT, ...).
    Containers are found by the labels docker-compose puts on them, so any project
    started from this compose file can be driven, whoever started it."""

    def __init__(self, name: str | None = None, *, compose_file: str | os.PathLike = COMPOSE_FILE,
                 env: dict[str, str] | None = None, log: Callable[[str], None] | None = None):
        self.name = name or default_project()
        self.compose_file = Path(compose_file)
        self.env = dict(env or {})
        self.log = log or (lambda msg: None)
        self._ids: dict[str, str] = {}

    # -- docker-compose
    def compose(self, *args: str, timeout: float = 600, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
        cmd = compose_command()
        if cmd is None:
            raise ChaosError("neither docker-compose nor `docker compose` is installed")
        env = {**os.environ, **self.env}
        return run([*cmd, "-p", self.name, "-f", str(self.compose_file), *args], timeout=timeout, env=env,
                   check=check, capture=capture)

    def build(self, timeout: float = 1800) -> None:
        """Build the image (only service s-a1 has `build:`; every service runs its image)."""
        self.compose("build", "s-a1", timeout=timeout)

    def up(self, timeout: float = 300) -> None:
        """docker-compose up -d, then wait until every node is healthy."""
        self.compose("up", "-d", "--no-build", timeout=timeout)
        self._ids.clear()
        self.wait_healthy(ALL_SERVICES, timeout=timeout)

    def down(self, timeout: float = 300) -> None:
        """Remove the containers, networks and volumes (-v) of the project, and the state
        directory status() wrote. Unpauses first (docker-compose cannot stop a paused container)."""
        for cid in self.containers().values():
            docker("unpause", cid, check=False)
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=timeout, check=False)
        self._ids.clear()
        shutil.rmtree(default_state_dir(self.name), ignore_errors=True)  # status()'s cluster.json

    # -- containers
    def containers(self) -> dict[str, str]:
        """service -> container id, for the project's containers (running or not)."""
        out = docker("ps", "-a", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.name}",
                     "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}')
        ids = {}
        for line in out.splitlines():
            cid, _, service = line.partition(" ")
            ids[service] = cid
        return ids

    def container(self, service: str) -> str:
        if service not in self._ids:
            ids = self.containers()
            if service not in ids:
                raise ChaosError(f"project {self.name!r} has no container for service {service!r} "
                                 f"(has: {', '.join(sorted(ids)) or 'none'}); is it up?")
            self._ids.update(ids)
        return self._ids[service]

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container(service)))[0]

    def state(self, service: str) -> str:
        """running / paused / exited / ..., with the health status: "running (healthy)"."""
        st = self.inspect(service)["State"]
        health = (st.get("Health") or {}).get("Status")
        return f"{st['Status']} ({health})" if health and st["Status"] == "running" else st["Status"]

    def network(self, short: str) -> str:
        return f"{self.name}_{short}"

    def addresses(self, service: str) -> dict[str, str]:
        """network short name -> the container's IP address on it."""
        nets = self.inspect(service)["NetworkSettings"]["Networks"] or {}
        prefix = f"{self.name}_"
        return {k[len(prefix):] if k.startswith(prefix) else k: v["IPAddress"] for k, v in nets.items() if v.get("IPAddress")}

    def networks(self, service: str) -> set[str]:
        """The networks (short names) the container is attached to, running or not."""
        prefix = f"{self.name}_"
        nets = self.inspect(service)["NetworkSettings"]["Networks"] or {}
        return {k[len(prefix):] if k.startswith(prefix) else k for k in nets}

    def host_address(self, service: str) -> str:
        """127.0.0.1:PORT, the host port an instance's gRPC port is published on."""
        out = docker("port", self.container(service), f"{INSTANCE_PORT}/tcp", check=False)
        for line in out.splitlines():
            if line.startswith("127.0.0.1:"):
                return line.strip()
        if self.env.get(PORT_ENV[service]):
            return f"127.0.0.1:{self.env[PORT_ENV[service]]}"
        raise ChaosError(f"{service} has no published port (is it running?)")

    def url(self, service: str = WRITER) -> str:
        return f"boreal://{self.host_address(service)}/"

    def health(self, service: str) -> str:
        return docker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                      self.container(service), check=False) or "missing"

    def wait_healthy(self, services: Iterable[str] = ALL_SERVICES, timeout: float = 120) -> float:
        """Wait until each service's container reports healthy; returns the seconds waited."""
        t0 = time.monotonic()
        pending = list(services)
        while True:
            pending = [s for s in pending if self.health(s) != "healthy"]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                detail = "; ".join(f"{s}: {self.health(s)}" for s in pending)
                logs = self.logs(pending[0], tail=15)
                raise ChaosError(f"not healthy after {timeout:.0f}s: {detail}\nlast log lines of {pending[0]}:\n{logs}")
            time.sleep(0.5)

    def logs(self, service: str, tail: int = 30) -> str:
        proc = run(["docker", "logs", "--tail", str(tail), self.container(service)], check=False)
        return (proc.stdout + proc.stderr).strip()

    # -- faults
    def kill(self, *services: str) -> None:
        for s in services:
            if self.health(s) == "paused":
                docker("unpause", self.container(s))
            docker("kill", self.container(s))
            self.log(f"killed {s}")

    def stop(self, *services: str, grace_s: float = 15) -> None:
        if not services:
            return
        for s in services:
            if self.inspect(s)["State"]["Paused"]:
                docker("unpause", self.container(s))
        docker("stop", "-t", str(int(grace_s)), *[self.container(s) for s in services], timeout=grace_s + 60)
        self.log(f"stopped {' '.join(services)}")

    def start(self, *services: str, wait: bool = True, timeout: float = 120) -> None:
        if not services:
            return
        docker("start", *[self.container(s) for s in services])
        self.log(f"started {' '.join(services)}")
        if wait:
            self.wait_healthy(services, timeout=timeout)

    def pause(self, *services: str) -> None:
        for s in services:
            docker_pause(self.container(s))
            self.log(f"paused {s}")

    def unpause(self, *services: str) -> None:
        for s in services:
            docker("unpause", self.container(s))
            self.log(f"unpaused {s}")

    def az_nodes(self, az: str, *, with_writer: bool = False) -> list[str]:
        """The nodes `cut-az AZ` disconnects: the AZ's storage nodes and readers (the writer only if asked)."""
        if az not in AZS:
            raise ChaosError(f"no AZ {az!r} (AZs: {', '.join(AZS)})")
        instances = [s for s in INSTANCE_SERVICES[az] if s != WRITER or with_writer]
        return [*STORAGE_SERVICES[az], *instances]

    def cut_az(self, az: str, *, with_writer: bool = False) -> list[str]:
        """Disconnect the AZ's nodes from the `storage` network. Returns the services cut."""
        net = self.network("storage")
        cut = []
        for s in self.az_nodes(az, with_writer=with_writer):
            if "storage" in self.networks(s):
                docker("network", "disconnect", net, self.container(s))
                cut.append(s)
        self.log(f"cut AZ {az} off the storage network: {' '.join(cut) or 'nothing (already cut)'}")
        return cut

    def heal_az(self, az: str) -> list[str]:
        """Reconnect every node of the AZ to `storage`, with the service name as alias (as
        docker-compose created it: other nodes address it by that name)."""
        net = self.network("storage")
        healed = []
        for s in [*STORAGE_SERVICES[az], *INSTANCE_SERVICES[az]]:
            if "storage" not in self.networks(s):
                docker("network", "connect", "--alias", s, net, self.container(s))
                healed.append(s)
        self.log(f"reconnected AZ {az} to the storage network: {' '.join(healed) or 'nothing (was not cut)'}")
        return healed

    def heal_all(self) -> None:
        """Undo every fault: unpause, reconnect, start what is not running."""
        ids = self.containers()
        for s in ALL_SERVICES:
            if s not in ids:
                continue
            st = self.inspect(s)["State"]
            if st["Paused"]:
                self.unpause(s)
        for az in AZS:
            self.heal_az(az)
        stopped = [s for s in ALL_SERVICES if s in ids and not self.inspect(s)["State"]["Running"]]
        storage, instances = [s for s in stopped if s in ALL_STORAGE], [s for s in stopped if s not in ALL_STORAGE]
        if storage:
            self.start(*storage, wait=True)
        if WRITER in instances:
            self.start(WRITER, wait=True)
        if readers := [s for s in instances if s != WRITER]:
            self.start(*readers, wait=True)

    # -- boreal status
    def write_cluster_state(self, data_dir: str | os.PathLike) -> Path:
        """A cluster.json in data_dir naming this project's nodes, for `boreal status --data`:
        storage nodes at their container address (on `storage` if connected, else on their
        AZ network: the host reaches both), instances at their published 127.0.0.1 port."""
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        nodes = []
        ids = self.containers()
        for s in ALL_SERVICES:
            if s not in ids:
                continue
            role = "storage" if s in ALL_STORAGE else "writer" if s == WRITER else "reader"
            if role == "storage":
                addrs = self.addresses(s)
                ip = addrs.get("storage") or addrs.get(f"az-{az_of(s)}")
                address = f"{ip}:{STORAGE_PORT}" if ip else f"{s}:{STORAGE_PORT}"  # not running: reported down
            else:
                try:
                    address = self.host_address(s)
                except ChaosError:
                    address = f"{s}:{INSTANCE_PORT}"
            nodes.append({
                "node_id": s, "az": az_of(s), "role": role, "address": address, "pid": None,
                "data_dir": f"container {self.name}/{s}:/data", "log_path": f"docker logs {ids[s][:12]}",
                "metrics_address": None, "started_at": None,
            })
        doc = {"version": 1, "base_dir": str(data), "launcher_pid": None, "detached": True,
               "compose_project": self.name, "nodes": nodes}
        path = data / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
        return path

    def status(self, data_dir: str | os.PathLike | None = None, timeout_s: float = 1.0) -> dict:
        """collect_status() of `boreal status` for this project (a JSON-ready report)."""
        from borealdb.nodes.cli import collect_status

        data = Path(data_dir or default_state_dir(self.name))
        self.write_cluster_state(data)
        return collect_status(data, timeout_s)

    def wait_caught_up(self, timeout: float = 120) -> float:
        """Wait until every storage segment's SCL reaches the writer's VDL as of the call
        (gossip has repaired what a fault made a node miss). Returns the seconds waited."""
        t0 = time.monotonic()
        target = None
        last = "no status yet"
        while time.monotonic() - t0 < timeout:
            try:
                report = self.status()
            except Exception as e:  # noqa: BLE001 - a node may be restarting
                last = f"{type(e).__name__}: {e}"
                time.sleep(0.5)
                continue
            writer = next((n for n in report["nodes"] if n["node_id"] == WRITER), None)
            if target is None:
                if writer and writer["up"] and writer.get("vdl") is not None:
                    target = writer["vdl"]
                else:
                    last = "writer not answering"
                    time.sleep(0.5)
                    continue
            behind = []
            for pg in report["pgs"]:
                members = pg["members"] or list(ALL_STORAGE)
                for m in members:
                    scl = pg["scl"].get(m)
                    if scl is None or scl < target:
                        behind.append(f"{pg['volume_id']}/{pg['pg']}@{m}={scl if scl is not None else 'down'}")
            if not behind and report["pgs"]:
                return time.monotonic() - t0
            last = f"behind VDL {target}: {', '.join(behind[:6])}{' ...' if len(behind) > 6 else ''}"
            time.sleep(0.5)
        raise ChaosError(f"storage did not catch up within {timeout:.0f}s ({last})")


def default_state_dir(project: str) -> Path:
    return Path(tempfile.gettempdir()) / f"boreal-compose-{project}"


# ---- writer load ---------------------------------------------------------------------


def connect_retrying(url: str, timeout_s: float = 60.0):
    """borealdb.connect(url), retrying Unavailable until timeout_s: the client gives up on a
    connection attempt whose handshake takes more than ~100 ms (its gRPC reconnect backoff
    options also bound the connect timeout), which happens while a node is busy or paused."""
    import borealdb
    from borealdb import errors

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return borealdb.connect(url, timeout_s=timeout_s)
        except errors.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)



@dataclass
class LoadEvent:
    t: float            # time.monotonic()
    writer: int
    kind: str           # "error" or "unknown" (OutcomeUnknown)
    detail: str


@dataclass
class WriterLoad:
    """Client threads inserting distinct rows into `chaos_rows` on `url`, recording which
    inserts were acknowledged (committed: durable once execute returns), which had an
    unknown outcome (connection lost mid-commit) and every error, with its time.

    Rows are (k TEXT PRIMARY KEY, run TEXT, writer INTEGER, seq INTEGER); k = "RUN-W-SEQ"."""

    url: str
    writers: int = 4
    rate: float = 0.0            # rows/s over all writers; 0 = as fast as the writer answers
    timeout_s: float = 10.0      # client timeout of each statement
    run_id: str = field(default_factory=lambda: f"r{int(time.time() * 1000) % 10**10}")
    acked: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    events: list[LoadEvent] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def create_table(self) -> None:
        conn = connect_retrying(self.url, 30)
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (k TEXT PRIMARY KEY, run TEXT NOT NULL, "
                         "writer INTEGER NOT NULL, seq INTEGER NOT NULL)")
        finally:
            conn.close()

    def start(self) -> "WriterLoad":
        """Create the table, connect every writer (retrying), then start inserting."""
        self.create_table()
        conns = [connect_retrying(self.url, self.timeout_s + 20) for _ in range(self.writers)]
        self.t_start = time.monotonic()
        for w, conn in enumerate(conns):
            t = threading.Thread(target=self._writer, args=(w, conn), name=f"chaos-writer-{w}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)
        self.t_stop = time.monotonic()

    def _writer(self, w: int, conn) -> None:
        import borealdb
        from borealdb import errors

        interval = self.writers / self.rate if self.rate > 0 else 0.0
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            try:
                if conn is None:
                    conn = borealdb.connect(self.url, timeout_s=self.timeout_s)
            except errors.Error as e:
                self._event(w, "error", f"connect: {type(e).__name__}: {e}")
                self._stop.wait(0.2)
                continue
            seq += 1
            key = f"{self.run_id}-{w}-{seq}"
            try:
                conn.execute(f"INSERT INTO {TABLE} (k, run, writer, seq) VALUES (?, ?, ?, ?)", (key, self.run_id, w, seq))
            except errors.OutcomeUnknown as e:
                with self._lock:
                    self.unknown.add(key)
                self._event(w, "unknown", f"{type(e).__name__}: {e}")
                conn = self._drop(conn)
                self._stop.wait(0.1)
                continue
            except errors.Error as e:
                self._event(w, "error", f"{type(e).__name__}: {e}")
                if not isinstance(e, errors.IntegrityError):
                    conn = self._drop(conn)
                self._stop.wait(0.1)
                continue
            with self._lock:
                self.acked.add(key)
                self.ack_times.append(time.monotonic())
        self._drop(conn)

    @staticmethod
    def _drop(conn) -> None:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
        return None

    def _event(self, w: int, kind: str, detail: str) -> None:
        with self._lock:
            self.events.append(LoadEvent(time.monotonic(), w, kind, detail))

    def commits_between(self, t0: float, t1: float) -> int:
        with self._lock:
            return sum(1 for t in self.ack_times if t0 <= t < t1)

    def events_between(self, t0: float, t1: float) -> list[LoadEvent]:
        with self._lock:
            return [e for e in self.events if t0 <= e.t < t1]

    def rows_on(self, url: str) -> set[str]:
        """The keys of this run's rows as `url` (writer or reader) shows them."""
        conn = connect_retrying(url)
        try:
            return {r[0] for r in conn.execute(f"SELECT k FROM {TABLE} WHERE run = ?", (self.run_id,))}
        finally:
            conn.close()

    def lost(self, url: str) -> list[str]:
        """Acknowledged rows that `url` does not have (must be empty)."""
        present = self.rows_on(url)
        return sorted(self.acked - present)


# ---- a chaos run ---------------------------------------------------------------------


@dataclass
class FaultResult:
    fault: str
    target: str
    t_inject: float
    t_healed: float
    t_settled: float
    errors_allowed: bool
    commits: int = 0
    errors: list[LoadEvent] = field(default_factory=list)

    def line(self) -> str:
        hold = self.t_healed - self.t_inject
        settle = self.t_settled - self.t_healed
        kinds: dict[str, int] = {}
        for e in self.errors:
            kinds[e.detail.split(":")[0]] = kinds.get(e.detail.split(":")[0], 0) + 1
        errs = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        flag = "" if not self.errors or self.errors_allowed else "  <-- client errors during a fault the cluster should hide"
        return (f"{self.fault:<13} {self.target:<6} lasted {hold:5.1f}s, caught up in {settle:5.1f}s: "
                f"{self.commits:6d} commits, client errors: {errs}{flag}")


class ChaosRun:
    def __init__(self, project: ComposeProject, *, faults: Sequence[str] = DEFAULT_FAULTS, hold_s: float = 5.0,
                 writers: int = 4, rate: float = 0.0, seed: int | None = None, with_writer: bool = False,
                 settle_timeout_s: float = 120.0, say: Callable[[str], None] = print):
        self.p = project
        self.faults = list(faults)
        self.hold_s = hold_s
        self.writers = writers
        self.rate = rate
        self.rng = random.Random(seed)
        self.with_writer = with_writer
        self.settle_timeout_s = settle_timeout_s
        self.say = say
        self.results: list[FaultResult] = []
        self.problems: list[str] = []
        self.load: WriterLoad | None = None

    def inject(self, fault: str) -> tuple[str, Callable[[], None], bool]:
        """Inject `fault`; returns (target, heal, client errors allowed)."""
        p, rng = self.p, self.rng
        # One container, picked at random: (candidates, fault action, healing action).
        one_container = {
            "pause-storage": (ALL_STORAGE, p.pause, p.unpause),
            "kill-storage": (ALL_STORAGE, p.kill, p.start),
            "pause-reader": (READERS, p.pause, p.unpause),
            "kill-reader": (READERS, p.kill, p.start),
        }
        if fault in one_container:
            candidates, act, heal = one_container[fault]
            s = rng.choice(candidates)
            act(s)
            return s, lambda: heal(s), False
        if fault == "stop-az":
            az = rng.choice(AZS)
            nodes = STORAGE_SERVICES[az]
            p.stop(*nodes)
            return f"AZ {az}", lambda: p.start(*nodes), False
        if fault == "cut-az":
            az = rng.choice(AZS if self.with_writer else AZS[1:])
            p.cut_az(az, with_writer=self.with_writer)
            return f"AZ {az}", lambda: p.heal_az(az), self.with_writer and az == "a"
        if fault == "kill-writer":
            p.kill(WRITER)
            return WRITER, lambda: p.start(WRITER), True
        raise ChaosError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")

    def run(self) -> bool:
        p = self.p
        p.wait_healthy(ALL_SERVICES, timeout=120)
        self.load = load = WriterLoad(p.url(WRITER), writers=self.writers, rate=self.rate)
        load.start()
        self.say(f"load: {self.writers} writer(s) on {load.url}, run id {load.run_id}")
        t_prev = time.monotonic()
        try:
            time.sleep(2.0)  # a baseline before the first fault
            for fault in self.faults:
                t0 = time.monotonic()
                target, heal, allowed = self.inject(fault)
                time.sleep(self.hold_s)
                heal()
                t1 = time.monotonic()
                p.wait_healthy(ALL_SERVICES, timeout=self.settle_timeout_s)
                p.wait_caught_up(timeout=self.settle_timeout_s)
                t2 = time.monotonic()
                # Errors since the previous fault settled count as this fault's.
                res = FaultResult(fault, target, t0, t1, t2, allowed, load.commits_between(t0, t2),
                                  load.events_between(t_prev, t2))
                self.results.append(res)
                self.say(res.line())
                t_prev = t2
            time.sleep(1.0)
        finally:
            load.stop()
        after = load.events_between(t_prev, load.t_stop)
        if after:
            self.problems.append(f"{len(after)} client error(s) after the last fault: {after[0].detail}")
        for r in self.results:
            if r.errors and not r.errors_allowed:
                self.problems.append(f"{len(r.errors)} client error(s) during {r.fault} {r.target}: {r.errors[0].detail}")
        self.check()
        return not self.problems

    def check(self) -> None:
        load, p = self.load, self.p
        assert load is not None
        lost = load.lost(p.url(WRITER))
        self.say(f"acknowledged rows: {len(load.acked)}, outcome unknown: {len(load.unknown)}, "
                 f"lost (acknowledged but missing on the writer): {len(lost)}")
        if lost:
            self.problems.append(f"{len(lost)} acknowledged row(s) lost, e.g. {', '.join(lost[:5])}")
        writer_rows = load.rows_on(p.url(WRITER))
        for reader in READERS:
            deadline = time.monotonic() + 30
            while True:
                rows = load.rows_on(p.url(reader))
                if rows == writer_rows:
                    self.say(f"{reader}: same {len(rows)} rows as the writer")
                    break
                if time.monotonic() > deadline:
                    self.problems.append(f"{reader} shows {len(rows)} rows of the run, the writer {len(writer_rows)} "
                                         f"(missing {len(writer_rows - rows)}, extra {len(rows - writer_rows)}) after 30 s")
                    break
                time.sleep(0.5)


# ---- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chaos.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-p", "--project", default=None,
                    help="compose project name (default: $COMPOSE_PROJECT_NAME, else the repository directory name)")
    ap.add_argument("-f", "--file", default=str(COMPOSE_FILE), help="compose file (default: %(default)s)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sp = sub.add_parser("status", help="`boreal status` of the compose cluster")
    sp.add_argument("--data", default=None, help="where to write cluster.json (default: $TMPDIR/boreal-compose-PROJECT)")
    sp.add_argument("--json", action="store_true", help="one JSON document")
    for name, what in (("kill", "docker kill (SIGKILL; it stays down until `start`)"),
                       ("stop", "docker stop (SIGTERM, SIGKILL after 15 s)"),
                       ("start", "docker start, then wait until healthy"),
                       ("pause", "docker pause (freeze every process)"),
                       ("unpause", "docker unpause")):
        sp = sub.add_parser(name, help=what, description=f"{what}. SERVICE: s-a1 .. s-c2, i-a1, i-b1, i-c1.")
        sp.add_argument("services", nargs="+", choices=ALL_SERVICES, metavar="SERVICE")
    sp = sub.add_parser("cut-az", help="disconnect an AZ's storage nodes and reader from the storage network")
    sp.add_argument("az", choices=AZS)
    sp.add_argument("--with-writer", action="store_true", help="AZ a: cut the writer i-a1 too")
    sp = sub.add_parser("heal-az", help="reconnect an AZ's nodes to the storage network")
    sp.add_argument("az", choices=AZS)
    sub.add_parser("heal", help="undo every fault: unpause, reconnect, start what is stopped; wait until healthy")
    run_doc = __doc__[__doc__.index("`run` starts"):__doc__.index("`status` writes")].strip()
    sp = sub.add_parser("run", help="writer load + a fault schedule; checks that no acknowledged row is lost",
                        description=run_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                    help=f"comma-separated, in order (default: %(default)s; known: {', '.join(FAULTS)})")
    sp.add_argument("--hold-s", type=float, default=5.0, help="how long each fault lasts (default: %(default)s)")
    sp.add_argument("--writers", type=int, default=4, help="client threads inserting rows (default: %(default)s)")
    sp.add_argument("--rate", type=float, default=0.0, help="rows/s in total; 0: as fast as possible (default)")
    sp.add_argument("--seed", type=int, default=None, help="seed of the random choices (nodes, AZs)")
    sp.add_argument("--with-writer", action="store_true", help="cut-az may pick AZ a and cut the writer too "
                    "(client errors are then expected)")
    sp.add_argument("--settle-timeout-s", type=float, default=120.0,
                    help="after healing, how long to wait for health and storage catch-up (default: %(default)s)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    project = ComposeProject(args.project, compose_file=args.file, log=lambda m: say(f"  {m}"))
    try:
        reason = docker_unavailable_reason()
        if reason:
            raise ChaosError(reason)
        cmd = args.command
        if cmd == "status":
            from borealdb.nodes import cli

            data = Path(args.data or default_state_dir(project.name))
            project.write_cluster_state(data)
            if not args.json:
                print(f"(project {project.name}; state file {data / 'cluster.json'}, "
                      f"also usable as: boreal status --data {data})\n", file=sys.stderr)
            return cli.main(["status", "--data", str(data), *(["--json"] if args.json else [])])
        if cmd in ("kill", "stop", "start", "pause", "unpause"):
            getattr(project, cmd)(*args.services)
            return 0
        if cmd == "cut-az":
            project.cut_az(args.az, with_writer=args.with_writer)
            return 0
        if cmd == "heal-az":
            project.heal_az(args.az)
            return 0
        if cmd == "heal":
            project.heal_all()
            project.wait_healthy(ALL_SERVICES)
            return 0
        if cmd == "run":
            faults = [f.strip() for f in args.faults.split(",") if f.strip()]
            unknown = [f for f in faults if f not in FAULTS]
            if unknown:
                print(f"chaos: error: unknown fault(s) {', '.join(unknown)} (known: {', '.join(FAULTS)})", file=sys.stderr)
                return 2
            chaos = ChaosRun(project, faults=faults, hold_s=args.hold_s, writers=args.writers, rate=args.rate,
                             seed=args.seed, with_writer=args.with_writer, settle_timeout_s=args.settle_timeout_s,
                             say=say)
            t0 = time.monotonic()
            ok = chaos.run()
            say(f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - t0:.0f}s" +
                "".join(f"\n  - {p}" for p in chaos.problems))
            return 0 if ok else 1
    except ChaosError as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
