"""Prometheus metrics endpoint shared by every node process."""

from __future__ import annotations

from prometheus_client import start_http_server


def start_metrics_server(listen: str) -> int:
    """Serve /metrics on `listen` ("host:port"; port 0 picks one). Returns the bound port."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    return server.server_port
