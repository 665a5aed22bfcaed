"""The instance node: SQLite (apsw) on the distributed volume, serving SQL sessions over gRPC."""
