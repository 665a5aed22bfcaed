"""SQLite on the distributed volume: an apsw VFS and a versioned page cache.

One `VolumeDatabase` per instance node. It opens

- one writer connection (`open_writer`): EXCLUSIVE locking, rollback journal in
  memory, cache spill off. SQLite's writes are buffered in the VFS until xSync,
  the commit point; xSync turns the dirty pages into redo records (page deltas, a
  full image only for a new page or where the delta would be larger) and appends
  them to the volume as ONE atomic group whose last record is the CPL. xSync does
  not wait for the storage quorum (asynchronous commit, as in Aurora): the caller
  reads `last_commit_lsn` afterwards and waits for `volume.durable_future(lsn)`
  before telling its client, while the writer connection goes on with the next
  transaction.
- snapshot connections (`snapshot()`): read-only SQLite connections whose file view
  is pinned at a read point (normally the VDL). They see exactly the committed state
  at that LSN, whatever the writer does meanwhile. Because the writer holds its
  EXCLUSIVE lock forever, SQLite's file change counter does not move between its
  commits; a snapshot's VFS therefore serves page 1 with a change counter derived
  from its read point, so SQLite drops its own page cache whenever the view moves.

The `PageVersions` cache holds page images by LSN and serves both: the writer's
newest view (including committed-but-not-yet-durable versions, which are pinned
until the VDL passes them) and snapshots at older read points. Anything not cached
is read from a storage segment at the read point; the read point is registered with
the volume so that storage keeps those versions (PGMRPL).

VFS page numbering: SQLite page N (1-based) lives at file offset (N-1) * page_size
and is volume page N-1.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import queue
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import apsw
from prometheus_client import Counter

from borealdb.errors import InvalidRequest, Unavailable, VolumeFull
from borealdb.nodes import redo
from borealdb.nodes.log import get_logger
from borealdb.nodes.volume.volume import PageChange

_INF = 1 << 64
_MAIN_DB = apsw.mapping_open_flags["SQLITE_OPEN_MAIN_DB"]
_vfs_ids = itertools.count(1)
_log = get_logger(component="vfs")

# ---- inline reads ------------------------------------------------------------------------
# The server first tries a small read on its event loop itself (no thread hand-off). That
# is only safe if nothing blocks: a page the cache lacks, a busy snapshot pool, a view
# still to come, or a long statement (more than INLINE_MAX_STEPS VM steps) abort the
# attempt, which changed nothing, and the read runs again in the read pool.
INLINE_MAX_STEPS = 2000
_inline = threading.local()


class WouldBlock(Exception):
    """An inline read would have to wait (I/O, a free connection, many steps)."""


@contextlib.contextmanager
def inline_only() -> Iterator[None]:
    """Within: any wait raises WouldBlock (see inline_blocked())."""
    _inline.active, _inline.blocked = True, False
    try:
        yield
    finally:
        _inline.active = False


def inline_blocked() -> bool:
    """True if the last inline_only() attempt was stopped because it would block."""
    return getattr(_inline, "blocked", False)


def check_may_block() -> None:
    """Call before anything that may wait: raises WouldBlock inside inline_only()."""
    if getattr(_inline, "active", False):
        _inline.blocked = True
        raise WouldBlock("an inline read would block")


def _stop_inline() -> bool:
    _inline.blocked = True
    return True  # interrupt the statement
M_REDO_BYTES = Counter("boreal_sql_redo_bytes_total", "Redo payload bytes of committed transactions")
M_COMMIT_GROUPS = Counter("boreal_sql_commit_groups_total", "Transactions committed to the volume")


@dataclass
class _Version:
    lsn: int            # the commit LSN that produced this image (0: never written)
    data: bytes         # page_size bytes; b"" for a page never written
    valid_to: int       # the image is known current up to this LSN (_INF: written here, current until replaced)


class PageVersions:
    """Page images by LSN, bounded in bytes.

    Per page an ascending list of versions; version i is the page's content for read
    points in [lsn_i, min(lsn_{i+1}, valid_to_i + 1)). Versions the writer made here
    are current until it replaces them (valid_to = infinity, then the next one's LSN - 1);
    versions fetched from storage at read point R are only known current up to R, even
    when a newer version follows (the page may have changed in between: reads there
    miss and fetch again).

    Eviction never drops a version above the VDL (storage could not serve it yet) and
    drops whole pages, least recently used first, so that the lists stay contiguous.
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 1 << 16:
            raise InvalidRequest(f"page cache capacity {capacity_bytes} bytes is below 64 KiB")
        self.capacity_bytes = capacity_bytes
        self._pages: OrderedDict[int, list[_Version]] = OrderedDict()
        self._lock = threading.Lock()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, page: int, read_lsn: int) -> bytes | None:
        """The page's image at read_lsn, or None when the cache cannot tell."""
        with self._lock:
            versions = self._pages.get(page)
            if versions is None:
                self.misses += 1
                return None
            i = bisect.bisect_right(versions, read_lsn, key=lambda v: v.lsn) - 1
            if i < 0 or versions[i].valid_to < read_lsn:
                self.misses += 1
                return None
            self._pages.move_to_end(page)
            self.hits += 1
            return versions[i].data

    def newest(self, page: int) -> _Version | None:
        with self._lock:
            versions = self._pages.get(page)
            return versions[-1] if versions else None

    def put_written(self, page: int, lsn: int, data: bytes, vdl: int) -> None:
        """A version this writer committed at `lsn`: current until it writes the page again.
        It proves the version before it current until lsn - 1 (the one writer wrote the
        page in between, or it did not change; a replica calls this only on a current
        newest version)."""
        with self._lock:
            versions = self._pages.setdefault(page, [])
            assert not versions or versions[-1].lsn < lsn, f"page {page}: LSNs only grow ({versions[-1].lsn} >= {lsn})"
            if versions:
                versions[-1].valid_to = lsn - 1
            versions.append(_Version(lsn, data, _INF))
            self.size_bytes += len(data)
            self._pages.move_to_end(page)
            self._evict(vdl)

    def put_image(self, page: int, lsn: int, data: bytes) -> None:
        """A full image of a page not cached, current from `lsn` (a replica's redo). It
        goes in at the cold end: a bulk load must not push out the pages reads use (a
        read moves it to the hot end)."""
        with self._lock:
            # Any versions already there (none, as the caller checked) give way: reads
            # below `lsn` then miss and fetch, which is always right.
            for v in self._pages.pop(page, ()):
                self.size_bytes -= len(v.data)
            self._pages[page] = [_Version(lsn, data, _INF)]
            self._pages.move_to_end(page, last=False)
            self.size_bytes += len(data)
            self._evict(_INF)

    def put_fetched(self, page: int, page_lsn: int, data: bytes, read_lsn: int, vdl: int) -> None:
        """An image read from storage at read_lsn, whose newest record is page_lsn."""
        with self._lock:
            versions = self._pages.setdefault(page, [])
            i = bisect.bisect_left(versions, page_lsn, key=lambda v: v.lsn)
            if i < len(versions) and versions[i].lsn == page_lsn:
                versions[i].valid_to = max(versions[i].valid_to, read_lsn)
            elif i == len(versions) or versions[i].lsn > read_lsn:
                # Insert only where it keeps the list contiguous: before the next known
                # version (which must be newer than what the read could see) or at the end.
                if i > 0 and versions[i - 1].valid_to < page_lsn - 1 and versions[i - 1].valid_to != _INF:
                    # A gap of unknown history below: the older entries are useless now.
                    for v in versions[:i]:
                        self.size_bytes -= len(v.data)
                    del versions[:i]
                    i = 0
                versions.insert(i, _Version(page_lsn, data, read_lsn))
                self.size_bytes += len(data)
            self._pages.move_to_end(page)
            self._evict(vdl)

    def trim_below(self, min_read_lsn: int) -> None:
        """Forget versions no open or future read can need (all older than the newest <= min_read_lsn)."""
        with self._lock:
            for versions in self._pages.values():
                i = bisect.bisect_right(versions, min_read_lsn, key=lambda v: v.lsn) - 1
                if i > 0:
                    for v in versions[:i]:
                        self.size_bytes -= len(v.data)
                    del versions[:i]

    def _evict(self, vdl: int) -> None:
        if self.size_bytes <= self.capacity_bytes:
            return
        for page in list(self._pages):
            if self.size_bytes <= self.capacity_bytes * 0.9:
                break
            versions = self._pages[page]
            if versions and versions[-1].lsn > vdl:
                continue  # not yet durable: storage could not serve it
            for v in versions:
                self.size_bytes -= len(v.data)
            del self._pages[page]


class _Header:
    """Fields of the SQLite database header (page 1) that the VFS needs."""

    CHANGE_COUNTER = 24
    PAGE_COUNT = 28
    VERSION_VALID_FOR = 92

    @staticmethod
    def page_count(page1: bytes) -> int:
        if len(page1) < 100:
            return 0
        counter, count = struct.unpack_from(">I", page1, 24)[0], struct.unpack_from(">I", page1, 28)[0]
        valid_for = struct.unpack_from(">I", page1, 92)[0]
        return count if counter == valid_for else 0

    @staticmethod
    def with_counter(page1: bytes, counter: int) -> bytes:
        out = bytearray(page1)
        struct.pack_into(">I", out, 24, counter & 0xFFFFFFFF)
        struct.pack_into(">I", out, 92, counter & 0xFFFFFFFF)
        return bytes(out)


class _BaseFile:
    """Shared page plumbing for writer and snapshot files."""

    def __init__(self, db: "VolumeDatabase"):
        self.db = db
        self.page_size = db.page_size

    def _page_at(self, page: int, read_lsn: int) -> bytes:
        """Volume page image at read_lsn (b'' if never written)."""
        return self.db.page_at(page, read_lsn)

    def _read(self, amount: int, offset: int, page_of) -> bytes:
        ps = self.page_size
        first, last = offset // ps, (offset + amount - 1) // ps
        if first == last:
            data = page_of(first)
            start = offset - first * ps
            return data[start : start + amount] if data else b""
        parts = []
        for page in range(first, last + 1):
            data = page_of(page) or bytes(ps)
            parts.append(data)
        blob = b"".join(parts)
        start = offset - first * ps
        return blob[start : start + amount]

    # Locking is SQLite's business between its own connections; ours never share a
    # file object, and the writer is the only writer by construction (epochs fence others).
    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return self.page_size

    def xDeviceCharacteristics(self) -> int:
        return 0

    def xClose(self) -> None:
        pass


class _WriterFile(_BaseFile):
    def __init__(self, db: "VolumeDatabase"):
        super().__init__(db)
        self.pending: dict[int, bytes] = {}
        vdl = db.volume.vdl
        self.size_pages = _Header.page_count(self._page_at(0, vdl))
        # Pages at or past this many did not exist at the last commit: xSync sends them as
        # full images without asking storage for a base (a blocking read per new page,
        # which stalled every write behind it). A page truncated away and grown again may
        # still have an old version on storage; a full image does not depend on it.
        self.committed_pages = self.size_pages
        self.last_commit_lsn = 0
        self.commit_error: BaseException | None = None

    def _current(self, page: int) -> bytes:
        data = self.pending.get(page)
        if data is not None:
            return data
        newest = self.db.cache.newest(page)
        if newest is not None and newest.valid_to == _INF:
            return newest.data
        return self._page_at(page, self.db.volume.vdl)

    def xRead(self, amount: int, offset: int) -> bytes:
        if offset >= self.size_pages * self.page_size:
            return b""
        return self._read(amount, offset, self._current)

    def xWrite(self, data: bytes, offset: int) -> None:
        ps = self.page_size
        page, start = divmod(offset, ps)
        if start == 0 and len(data) == ps:
            self.pending[page] = bytes(data)
        else:  # partial-page write (not used by SQLite in rollback modes, but be correct)
            end = start + len(data)
            if end > ps:
                raise InvalidRequest(f"write of {len(data)} bytes at {offset} crosses a page boundary")
            base = bytearray(self._current(page) or bytes(ps))
            base[start:end] = data
            self.pending[page] = bytes(base)
        self.size_pages = max(self.size_pages, page + 1)

    def xTruncate(self, newsize: int) -> None:
        pages = -(-newsize // self.page_size)
        for page in [p for p in self.pending if p >= pages]:
            del self.pending[page]
        self.size_pages = pages

    def xFileSize(self) -> int:
        return self.size_pages * self.page_size

    def xSync(self, flags: int) -> None:
        """The commit point: ship the transaction's pages as one atomic group."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        limit_pages = self.db.volume.config.max_size_bytes // self.page_size
        if max(pending) >= limit_pages:
            self.commit_error = VolumeFull(
                f"the database needs page {max(pending) + 1} but the volume holds at most {limit_pages} pages "
                f"({self.db.volume.config.max_size_bytes} bytes)")
            self.db.writer_needs_reopen = True
            raise self.commit_error
        changes: list[PageChange] = []
        images: list[tuple[int, bytes]] = []
        for page in sorted(pending):
            new = pending[page]
            newest = self.db.cache.newest(page)
            if newest is not None and newest.valid_to == _INF:
                old, old_lsn = newest.data, newest.lsn
            elif page >= self.committed_pages:
                old, old_lsn = b"", None
            else:
                old, old_lsn = self._page_at(page, self.db.volume.vdl), None
            if old == new:
                continue
            delta = redo.encode_delta(old, new) if old else None
            if delta is None:
                changes.append(PageChange(page, redo.FULL_PAGE, new, old_lsn))
            else:
                changes.append(PageChange(page, redo.PAGE_DELTA, delta, old_lsn))
            images.append((page, new))
        if not changes:
            return
        # Acks may make the group durable before its page versions are in the cache:
        # until they are, snapshots must not read at or above its LSN (visible_lsn()).
        self.db.publishing = True
        try:
            lsn = self.db.volume.append_group(changes)
        except BaseException as exc:
            # Nothing of this group was issued: SQLite sees an I/O error and rolls back;
            # the caller reads commit_error to report the real cause (volume full, fenced, ...).
            self.commit_error = exc
            self.db.writer_needs_reopen = True
            self.db.publishing = False
            raise
        vdl = self.db.volume.vdl
        for page, data in images:
            self.db.cache.put_written(page, lsn, data, vdl)
        assert lsn > self.last_commit_lsn, "commit LSNs only grow"
        self.last_commit_lsn = lsn
        self.committed_pages = self.size_pages
        self.db.publishing = False
        publisher = self.db.publisher
        if publisher is not None:  # read replicas: ship the group's redo (cheap when none subscribe)
            publisher.publish(lsn, changes)
        redo_bytes = sum(len(c.payload) for c in changes)
        self.db.commits += 1
        self.db.redo_bytes += redo_bytes
        M_COMMIT_GROUPS.inc()
        M_REDO_BYTES.inc(redo_bytes)


class _SnapshotFile(_BaseFile):
    def __init__(self, db: "VolumeDatabase"):
        super().__init__(db)
        self.read_lsn = 0

    def _page(self, page: int) -> bytes:
        data = self._page_at(page, self.read_lsn)
        if page == 0 and data:
            data = _Header.with_counter(data, self.read_lsn)
        return data

    def xRead(self, amount: int, offset: int) -> bytes:
        return self._read(amount, offset, self._page)

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("snapshot connections are read-only")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("snapshot connections are read-only")

    def xSync(self, flags: int) -> None:
        pass

    def xFileSize(self) -> int:
        return _Header.page_count(self._page_at(0, self.read_lsn)) * self.page_size


class _VolumeVFS(apsw.VFS):
    def __init__(self, name: str, db: "VolumeDatabase"):
        self.db = db
        self.vfs_name = name
        super().__init__(name, base="")

    def xOpen(self, name, flags):
        if name is not None and flags[0] & _MAIN_DB:
            filename = name.filename() if hasattr(name, "filename") else str(name)
            if filename.startswith(self.db.db_name + "-snapshot-"):
                file = _SnapshotFile(self.db)
                self.db._snapshot_files[filename] = file
                return file
            if not self.db.writable:
                raise apsw.CantOpenError("this database serves snapshot connections only (read replica)")
            if self.db.writer_file is not None and not self.db.writer_needs_reopen:
                raise apsw.CantOpenError("the database already has a writer connection")
            self.db.writer_file = _WriterFile(self.db)
            self.db.writer_needs_reopen = False
            return self.db.writer_file
        # Temporary files and in-memory journals: the default VFS.
        return apsw.VFSFile("", name, flags)

    def xAccess(self, pathname: str, flags: int) -> bool:
        if pathname.startswith(self.db.db_name):
            return False  # no journal or WAL file exists beside the volume database
        return super().xAccess(pathname, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.startswith(self.db.db_name):
            return
        super().xDelete(filename, syncdir)

    def xFullPathname(self, name: str) -> str:
        return name


class SnapshotDatabase:
    """A pool of snapshot connections over page images served by `page_at` (subclass hooks).

    Shared by the writer (`VolumeDatabase`) and read replicas (`replica.ReplicaDatabase`):
    a snapshot connection reads every page "as of" its pinned read point, and serves page
    1 with the change counter derived from that read point (see the module docstring)."""

    writable = False
    writer_file = None
    writer_needs_reopen = False

    def _init_snapshots(self, *, page_size: int, name: str, snapshot_pool_size: int, sqlite_cache_pages: int) -> None:
        self.page_size = page_size
        self.vfs_name = f"boreal-{next(_vfs_ids)}"
        self.db_name = f"/boreal/{name}.db"
        self.sqlite_cache_pages = sqlite_cache_pages
        self._vfs = _VolumeVFS(self.vfs_name, self)
        self._snapshots: queue.LifoQueue[tuple[apsw.Connection, _SnapshotFile]] = queue.LifoQueue()
        self._snapshot_lock = threading.Lock()
        self._snapshot_count = 0
        self.snapshot_pool_size = snapshot_pool_size
        self._all_snapshots: list[apsw.Connection] = []
        self._snapshot_files: dict[str, _SnapshotFile] = {}
        self._closed = False

    # ---- hooks (subclasses) ----------------------------------------------------------
    def page_at(self, page: int, read_lsn: int) -> bytes:
        """Volume page image at read_lsn (b'' if never written)."""
        raise NotImplementedError

    def default_read_lsn(self) -> int:
        raise NotImplementedError

    def register_read_point(self, lsn: int) -> Any:
        raise NotImplementedError

    def release_read_point(self, token: Any) -> None:
        raise NotImplementedError

    # ---- snapshots ----------------------------------------------------------------
    def _open_snapshot(self) -> tuple[apsw.Connection, _SnapshotFile]:
        name = f"{self.db_name}-snapshot-{next(_vfs_ids)}"
        conn = apsw.Connection(name, flags=apsw.SQLITE_OPEN_READONLY, vfs=self.vfs_name)
        file = self._snapshot_files.pop(name)  # registered by xOpen, which SQLite calls while opening
        conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA cache_size=-{max(1, self.sqlite_cache_pages * self.page_size // 1024)}")
        self._all_snapshots.append(conn)
        return conn, file

    @contextlib.contextmanager
    def snapshot(self, read_lsn: int | None = None, timeout_s: float = 30.0) -> Iterator[apsw.Connection]:
        """A read-only connection seeing the database exactly as of read_lsn (default: the VDL).

        The read point is registered with the volume for as long as the connection is
        lent, so storage keeps the page versions it needs (PGMRPL)."""
        if self._closed:
            raise Unavailable("database is closed")
        try:
            conn, file = self._snapshots.get_nowait()
        except queue.Empty:
            check_may_block()
            with self._snapshot_lock:
                grow = self._snapshot_count < self.snapshot_pool_size
                if grow:
                    self._snapshot_count += 1
            if grow:
                try:
                    conn, file = self._open_snapshot()
                except BaseException:
                    with self._snapshot_lock:
                        self._snapshot_count -= 1
                    raise
            else:
                try:
                    conn, file = self._snapshots.get(timeout=timeout_s)
                except queue.Empty:
                    raise Unavailable(f"no snapshot connection free after {timeout_s}s") from None
        lsn = self.default_read_lsn() if read_lsn is None else read_lsn
        token = self.register_read_point(lsn)
        inline = getattr(_inline, "active", False)
        try:
            file.read_lsn = lsn
            if inline:
                conn.set_progress_handler(_stop_inline, INLINE_MAX_STEPS)
            yield conn
        finally:
            if inline:
                conn.set_progress_handler(None)
            file.read_lsn = 0
            self.release_read_point(token)
            self._snapshots.put((conn, file))

    def close(self) -> None:
        self._closed = True
        for conn in self._all_snapshots:
            conn.close()
        self._all_snapshots.clear()


class VolumeDatabase(SnapshotDatabase):
    """SQLite on a `Volume`: one writer connection and a pool of snapshot connections."""

    def __init__(self, volume: Any, *, cache_capacity_bytes: int = 256 << 20, snapshot_pool_size: int = 8,
                 sqlite_cache_pages: int = 4096, busy_timeout_ms: int = 0):
        self.volume = volume
        self.page_size = volume.descriptor().page_size
        self.cache = PageVersions(cache_capacity_bytes)
        self.writer_file: _WriterFile | None = None
        self.writer_needs_reopen = False
        self.publishing = False          # a commit group is between append_group and the cache
        self.commits = 0
        self.redo_bytes = 0
        self.publisher: Any = None  # replica.RedoPublisher: ships commit groups to read replicas
        self._init_snapshots(page_size=self.page_size, name=volume.descriptor().volume_id,
                             snapshot_pool_size=snapshot_pool_size, sqlite_cache_pages=sqlite_cache_pages)

    writable = True

    def page_at(self, page: int, read_lsn: int) -> bytes:
        data = self.cache.get(page, read_lsn)
        if data is not None:
            return data
        check_may_block()
        data, page_lsn = self.volume.read_page(page, read_lsn)
        self.cache.put_fetched(page, page_lsn, data, read_lsn, self.volume.vdl)
        return data

    def default_read_lsn(self) -> int:
        return self.visible_lsn()

    def register_read_point(self, lsn: int) -> Any:
        return self.volume.register_read_point(lsn)

    def release_read_point(self, token: Any) -> None:
        self.volume.release_read_point(token)

    # ---- writer ------------------------------------------------------------------
    def open_writer(self) -> apsw.Connection:
        """The single writer connection. Reopen it after a failed commit (writer_needs_reopen)."""
        conn = apsw.Connection(self.db_name, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE, vfs=self.vfs_name)
        try:
            conn.execute(f"PRAGMA page_size={self.page_size}")
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=MEMORY")
            # xSync marks the commit point: keep it (synchronous >= NORMAL).
            conn.execute("PRAGMA synchronous=FULL")
            # Pages written before COMMIT would reach the VFS early; the VFS buffers them
            # anyway, but without spilling SQLite never writes a page twice per commit.
            conn.execute("PRAGMA cache_spill=OFF")
            conn.execute(f"PRAGMA cache_size=-{max(1, self.sqlite_cache_pages * self.page_size // 1024)}")
            conn.execute("PRAGMA foreign_keys=ON")
            actual = conn.execute("PRAGMA page_size").fetchone()[0]
            if actual != self.page_size:
                raise InvalidRequest(f"database page size {actual} differs from the volume's {self.page_size}")
        except BaseException:
            conn.close()
            raise
        return conn

    def visible_lsn(self) -> int:
        """The newest read point a snapshot may use: the VDL, but never a commit whose
        page versions are still being put into the cache."""
        vdl = self.volume.vdl  # read before the flag: a group issued after this read has a higher LSN
        if self.publishing:
            return min(vdl, self.last_commit_lsn)
        return vdl

    @property
    def last_commit_lsn(self) -> int:
        return self.writer_file.last_commit_lsn if self.writer_file else 0

    def take_commit_error(self) -> BaseException | None:
        """The volume error behind the last failed commit (and forget it)."""
        if self.writer_file is None:
            return None
        exc, self.writer_file.commit_error = self.writer_file.commit_error, None
        return exc
