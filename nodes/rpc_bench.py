"""`boreal bench rpc`: the CPU cost of one gRPC message in Python, on this machine.

Every borealdb commit is a handful of gRPC messages (the client's request and reply, a
batch of redo to each of 6 storage segments and their 6 acknowledgements, a redo message
to each replica), and every process is Python. This benchmark measures the floor those
messages put under a commit, with no borealdb code on either side:

- unary: N client threads (the synchronous API, as the `borealdb` client uses) call an
  echo method of a grpc.aio server (as every node runs) with a 100-byte payload;
- stream: one bidirectional stream (as the writer's AppendStream to a storage node),
  the client keeping N messages of 1 KiB in flight and the server answering each one;
- after idle: one client thread makes unary calls with a pause of G ms before each
  (`--idle-gaps-ms`), as the `boreal bench lag` probe's SELECT on a connection that was
  quiet for ~40 ms. On the 2-core virtual machine of README.md's figures a call after
  a 40 ms pause took 4-6 times as long as back to back.

The server runs in a separate process (spawned, so no gRPC state is inherited), on
127.0.0.1 and an ephemeral port. Both sides run with the gRPC poller every borealdb
process uses (client/_grpc_env.py); `GRPC_EXPERIMENTS="" boreal bench rpc` measures
gRPC's default instead. Printed per level: messages/s, p50/p99 round trip, and
CPU time per message in the server process and in the client process. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass

from borealdb.nodes.benchutil import percentile, print_table, run_workers

SERVICE = "borealdb.bench.Echo"
UNARY_PAYLOAD = b"x" * 100
STREAM_PAYLOAD = b"x" * 1024


@dataclass
class RpcResult:
    kind: str
    in_flight: int
    messages: int
    duration_s: float
    messages_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_message: float
    client_cpu_ms_per_message: float


def _serve(port_out, stop) -> None:
    """The echo server (child process): Echo (unary), Stream (one answer per message) and
    Cpu (this process's CPU seconds, as text)."""
    import grpc

    from borealdb.nodes.rpc import SERVER_OPTIONS

    async def echo(request: bytes, _context) -> bytes:
        return request

    async def stream(requests, _context):
        async for request in requests:
            yield request[:8]

    async def cpu(_request: bytes, _context) -> bytes:
        return repr(time.process_time()).encode()

    async def main() -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
            "Cpu": grpc.unary_unary_rpc_method_handler(cpu),
        }),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_out.put(port)
        while not stop.is_set():  # the parent sets it; a dead parent's daemon child is killed
            await asyncio.sleep(0.2)
        await server.stop(None)

    asyncio.run(main())


@dataclass
class IdleResult:
    kind: str            # "after idle"
    gap_ms: float        # the pause before each call
    calls: int
    p50_ms: float
    p99_ms: float


def _measure_after_idle(address: str, gap_ms: float, calls: int) -> IdleResult:
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Echo")
        call(UNARY_PAYLOAD, timeout=10)  # connected before the first pause
        latencies = []
        for _ in range(calls):
            if gap_ms:
                time.sleep(gap_ms / 1000)
            t0 = time.perf_counter()
            call(UNARY_PAYLOAD, timeout=10)
            latencies.append(time.perf_counter() - t0)
    latencies.sort()
    return IdleResult("after idle", gap_ms, calls, round(percentile(latencies, 0.5) * 1000, 3),
                      round(percentile(latencies, 0.99) * 1000, 3))


def _gaps_ms(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated milliseconds, got {text!r}") from None
    if any(not 0 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError(f"each gap must be in 0..1000 ms, got {text!r}")
    return values


def _server_cpu_s(channel) -> float:
    return float(channel.unary_unary(f"/{SERVICE}/Cpu")(b"", timeout=10))


def _measure_unary(address: str, clients: int, duration_s: float) -> RpcResult:
    import grpc

    channels = [grpc.insecure_channel(address) for _ in range(clients)]
    try:
        calls = [ch.unary_unary(f"/{SERVICE}/Echo") for ch in channels]
        for call in calls:
            call(UNARY_PAYLOAD, timeout=10)  # connected before the clock starts
        latencies: list[list[float]] = [[] for _ in range(clients)]

        def worker(i: int, deadline: float) -> None:
            call, mine = calls[i], latencies[i]
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                call(UNARY_PAYLOAD, timeout=10)
                mine.append(time.perf_counter() - t0)

        server0, client0 = _server_cpu_s(channels[0]), time.process_time()
        elapsed = run_workers(clients, duration_s, worker)
        server1, client1 = _server_cpu_s(channels[0]), time.process_time()
    finally:
        for ch in channels:
            ch.close()
    # The two Cpu calls are counted in the server's time; over thousands of calls they do not show.
    return _result("unary", clients, sorted(x for xs in latencies for x in xs), elapsed,
                   server1 - server0, client1 - client0)


def _measure_stream(address: str, window: int, duration_s: float) -> RpcResult:
    import grpc

    async def run() -> tuple[list[float], float, float, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream(f"/{SERVICE}/Stream")()
            await call.write(STREAM_PAYLOAD)
            await call.read()  # connected before the clock starts
            sync_channel = grpc.insecure_channel(address)
            server0, client0 = _server_cpu_s(sync_channel), time.process_time()
            sent: list[float] = []
            latencies: list[float] = []
            t0 = time.monotonic()
            deadline = t0 + duration_s
            while time.monotonic() < deadline or len(latencies) < len(sent):
                while len(sent) - len(latencies) < window and time.monotonic() < deadline:
                    sent.append(time.perf_counter())
                    await call.write(STREAM_PAYLOAD)
                await call.read()
                latencies.append(time.perf_counter() - sent[len(latencies)])
            elapsed = time.monotonic() - t0
            server1, client1 = _server_cpu_s(sync_channel), time.process_time()
            sync_channel.close()
            await call.done_writing()
            return latencies, elapsed, server1 - server0, client1 - client0

    latencies, elapsed, server_s, client_s = asyncio.run(run())
    return _result("stream", window, sorted(latencies), elapsed, server_s, client_s)


def _result(kind: str, in_flight: int, latencies_s: list[float], elapsed_s: float, server_cpu_s: float,
            client_cpu_s: float) -> RpcResult:
    n = max(1, len(latencies_s))
    return RpcResult(kind, in_flight, len(latencies_s), round(elapsed_s, 2), round(len(latencies_s) / elapsed_s, 1),
                     round(percentile(latencies_s, 0.5) * 1000, 3), round(percentile(latencies_s, 0.99) * 1000, 3),
                     round(server_cpu_s * 1000 / n, 3), round(client_cpu_s * 1000 / n, 3))


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 or v > 256 for v in values):
        raise argparse.ArgumentTypeError(f"each level must be in 1..256, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="boreal bench rpc", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=_positive_ints, default=[1, 8],
                   help="comma-separated levels: client threads (unary) and messages in flight (stream); default 1,8")
    p.add_argument("--duration-s", type=float, default=5.0, help="seconds per measurement (default: 5)")
    p.add_argument("--idle-gaps-ms", type=_gaps_ms, default=[0.0, 5.0, 20.0, 40.0],
                   help="pauses before each call of the after-idle measurement (default 0,5,20,40; '' skips it)")
    p.add_argument("--idle-calls", type=int, default=100, help="calls per pause (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per measurement instead of a table")
    args = p.parse_args(argv)
    if not 0 < args.duration_s <= 3600:
        p.error("--duration-s must be in (0, 3600]")
    if not 1 <= args.idle_calls <= 100_000:
        p.error("--idle-calls must be in 1..100000")

    ctx = multiprocessing.get_context("spawn")
    port_out, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(port_out, stop), daemon=True, name="boreal-bench-rpc-server")
    server.start()
    results: list[RpcResult] = []
    try:
        try:
            port = port_out.get(timeout=60)
        except Exception:  # noqa: BLE001 - queue.Empty: the child died or hung
            print("boreal bench rpc: the echo server did not start", file=sys.stderr)
            return 1
        address = f"127.0.0.1:{port}"
        print(f"echo server (grpc.aio, separate process) on {address}", file=sys.stderr, flush=True)
        for level in args.concurrency:
            results.append(_measure_unary(address, level, args.duration_s))
        for level in args.concurrency:
            results.append(_measure_stream(address, level, args.duration_s))
        idle = [_measure_after_idle(address, gap, args.idle_calls) for gap in args.idle_gaps_ms]
    finally:
        stop.set()
        server.join(timeout=10)
        if server.is_alive():
            server.kill()
            server.join(timeout=5)
    if args.json:
        for r in [*results, *idle]:
            print(json.dumps(asdict(r)))
        return 0
    print_table(["KIND", "IN FLIGHT", "MSGS/S", "P50 MS", "P99 MS", "SERVER CPU MS/MSG", "CLIENT CPU MS/MSG", "MSGS"],
                [[r.kind, r.in_flight, r.messages_per_s, r.p50_ms, r.p99_ms, r.server_cpu_ms_per_message,
                  r.client_cpu_ms_per_message, r.messages] for r in results])
    print("\nunary: client threads (sync API) -> grpc.aio server; stream: one bidirectional stream, "
          "each message answered. CPU: process time of each side per message.")
    if idle:
        print(f"\nunary round trip after a pause (one client thread, {args.idle_calls} calls per pause)")
        print_table(["PAUSE MS", "CALLS", "P50 MS", "P99 MS"], [[r.gap_ms, r.calls, r.p50_ms, r.p99_ms] for r in idle])
    return 0


if __name__ == "__main__":
    sys.exit(main())
