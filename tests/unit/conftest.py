"""Fixtures of the fast unit tests."""

import pytest

from tests.unit.inprocess import Storage


@pytest.fixture
def storage(tmp_path):
    """Six in-process storage engines; `storage.volume(**overrides)` opens a volume on them."""
    s = Storage(str(tmp_path))
    yield s
    s.close()
