"""Page-delta codec and record checksums (nodes/redo.py)."""

import random

import pytest

from borealdb.nodes import redo
from borealdb.protos import storage_pb2 as pb

PAGE = 4096


def _mutate(rng: random.Random, page: bytes, edits: int) -> bytes:
    out = bytearray(page)
    for _ in range(edits):
        start = rng.randrange(PAGE)
        length = min(rng.randrange(1, 200), PAGE - start)
        out[start : start + length] = rng.randbytes(length)
    return bytes(out)


@pytest.mark.parametrize("seed", range(20))
def test_delta_roundtrip_random_edits(seed):
    rng = random.Random(seed)
    old = rng.randbytes(PAGE)
    new = _mutate(rng, old, rng.randrange(1, 6))
    delta = redo.encode_delta(old, new)
    if delta is None:  # only when a full image is not larger
        return
    assert len(delta) < PAGE
    assert redo.apply_delta(old, delta, PAGE) == new


def test_identical_pages_give_empty_delta():
    page = bytes(range(256)) * 16
    assert redo.encode_delta(page, page) == b""
    assert redo.apply_delta(page, b"", PAGE) == page


def test_small_change_is_small():
    old = bytes(PAGE)
    new = bytearray(old)
    new[100:110] = b"abcdefghij"
    delta = redo.encode_delta(old, bytes(new))
    assert delta is not None and len(delta) == 4 + 10


def test_rewrite_of_whole_page_is_sent_full():
    rng = random.Random(7)
    assert redo.encode_delta(rng.randbytes(PAGE), rng.randbytes(PAGE)) is None


def test_delta_on_missing_base_uses_zero_page():
    delta = redo.encode_delta(bytes(PAGE), b"\x01" + bytes(PAGE - 1))
    assert redo.apply_delta(None, delta, PAGE)[0] == 1


@pytest.mark.parametrize(
    "delta, message",
    [
        (b"\x00", "truncated patch header"),
        (b"\x00\x00\x05\x00abc", "bad length"),
        (b"\x00\x00\x00\x00", "bad length"),
        (b"\xff\x0f\x04\x00abcd", "outside"),
    ],
)
def test_malformed_deltas_are_rejected(delta, message):
    with pytest.raises(redo.DeltaError, match=message):
        redo.apply_delta(None, delta, PAGE)


def test_check_payload_rejects_wrong_full_page_size_and_kind():
    with pytest.raises(redo.DeltaError):
        redo.check_payload(redo.FULL_PAGE, b"x" * 10, PAGE)
    with pytest.raises(redo.DeltaError):
        redo.check_payload(0, b"", PAGE)
    redo.check_payload(redo.FULL_PAGE, bytes(PAGE), PAGE)


def test_record_checksum_covers_every_field():
    base = dict(lsn=9, pg=2, page=17, pg_prev_lsn=4, page_prev_lsn=3, kind=pb.PAGE_DELTA, payload=b"\x00\x00\x01\x00z", consistency_point=True, epoch=3)
    rec = redo.seal_record(pb.RedoRecord(**base))
    assert redo.record_ok(rec)
    for field, value in [("lsn", 10), ("pg", 3), ("page", 18), ("pg_prev_lsn", 5), ("page_prev_lsn", 2), ("kind", pb.FULL_PAGE), ("payload", b"\x00\x00\x01\x00y"), ("consistency_point", False), ("epoch", 4)]:
        changed = pb.RedoRecord()
        changed.CopyFrom(rec)
        setattr(changed, field, value)
        assert not redo.record_ok(changed), field


def test_check_delta_accepts_exactly_what_apply_delta_accepts():
    import random
    import struct

    rnd = random.Random(7)
    page_size = 4096
    samples = [b"", struct.pack("<HH", 0, 0), struct.pack("<HH", 4090, 10) + b"x" * 10, b"\x01\x00\x02"]
    for _ in range(2000):
        parts = []
        for _p in range(rnd.randint(1, 3)):
            off, length = rnd.choice([(rnd.randrange(page_size), rnd.randint(1, 64)), (rnd.randrange(70000), rnd.randint(0, 9))])
            parts.append(struct.pack("<HH", off % 65536, length) + bytes(rnd.randint(0, length + 2)))
        samples.append(b"".join(parts))
    for delta in samples:
        try:
            redo.apply_delta(None, delta, page_size)
            applies = True
        except redo.DeltaError:
            applies = False
        try:
            redo.check_delta(delta, page_size)
            checks = True
        except redo.DeltaError:
            checks = False
        assert applies == checks, delta


def test_delta_patches_are_tight_and_exact_for_scattered_byte_edits():
    import struct

    rng = random.Random(11)
    for _ in range(500):
        old = rng.randbytes(PAGE)
        new = bytearray(old)
        for _e in range(rng.randrange(1, 30)):
            i = rng.choice([0, PAGE - 1, rng.randrange(PAGE)])
            new[i] = (new[i] + rng.randrange(1, 256)) % 256
        new = bytes(new)
        delta = redo.encode_delta(old, new)
        assert delta is not None and redo.apply_delta(old, delta, PAGE) == new
        pos = 0
        while pos < len(delta):  # every patch starts and ends on a changed byte
            offset, length = struct.unpack_from("<HH", delta, pos)
            assert old[offset] != new[offset] and old[offset + length - 1] != new[offset + length - 1]
            pos += 4 + length
