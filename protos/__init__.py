"""Wire protocol of borealdb: .proto sources and their generated stubs (see generate.py)."""
