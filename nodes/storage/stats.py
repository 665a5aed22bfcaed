"""Prometheus metrics of the storage node (one set per process, labelled by node)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_APPENDED = Counter("boreal_storage_records_appended_total", "Redo records made durable", ["node", "source"])
BYTES_APPENDED = Counter("boreal_storage_bytes_appended_total", "Framed bytes written to segment logs", ["node"])
FSYNCS = Counter("boreal_storage_fsyncs_total", "fsync calls of the group committer", ["node"])
APPEND_LATENCY = Histogram(
    "boreal_storage_append_latency_seconds", "Append request latency (validate + write + fsync)", ["node"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SEGMENT_SCL = Gauge("boreal_storage_segment_scl", "Segment complete LSN", ["node", "volume", "pg"])
GOSSIP_FETCHED = Counter("boreal_storage_gossip_records_fetched_total", "Records stored from peers", ["node"])
SCRUB_CORRUPT = Counter("boreal_storage_scrub_corruptions_total", "Corrupt records/versions found", ["node", "kind"])
REPAIRED = Counter("boreal_storage_records_repaired_total", "Corrupt records replaced from peers", ["node"])
GC_VERSIONS = Counter("boreal_storage_gc_versions_total", "Page versions garbage-collected", ["node"])
GC_RECORDS = Counter("boreal_storage_gc_records_total", "Records garbage-collected", ["node"])
REJECTED = Counter("boreal_storage_requests_rejected_total", "Requests rejected", ["node", "reason"])
