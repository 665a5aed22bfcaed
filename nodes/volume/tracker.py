"""LSN bookkeeping of the writer: SCL -> PGCL -> VCL -> VDL. Pure, no I/O, no locks.

The caller (Volume) serialises access. Every invariant is asserted:

- LSNs handed to add_record() strictly grow.
- A segment's SCL, a PG's PGCL, the VCL and the VDL never decrease (within an epoch;
  a new epoch builds a new tracker).
- VDL <= VCL <= last LSN issued.

Definitions (aurora-facts.md "LSN vocabulary"):
- PGCL(pg)  = the write_quorum-th highest SCL of the PG's segments (4th of 6).
- VCL       = highest LSN such that every record <= it has lsn <= PGCL of its PG.
- VDL       = highest consistency point (CPL) <= VCL.

Records are kept in a deque in LSN order until they are complete, so advancing the
VCL is O(1) amortised per record; the slowest 2 segments of a PG never hold it back
because only the 4th highest SCL matters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WRITE_QUORUM = 4
READ_QUORUM = 3
REPLICAS = 6


@dataclass
class _PG:
    members: tuple[str, ...]
    scls: dict[str, int] = field(default_factory=dict)
    pgcl: int = 0


class LsnTracker:
    def __init__(self, start_lsn: int = 0, write_quorum: int = WRITE_QUORUM, replicas: int = REPLICAS):
        assert start_lsn >= 0
        assert 0 < write_quorum <= replicas
        self.write_quorum = write_quorum
        self.replicas = replicas
        self._start = start_lsn
        self._last_lsn = start_lsn      # highest LSN issued (or the recovered VDL)
        self._vcl = start_lsn
        self._vdl = start_lsn
        self._pending: deque[tuple[int, int, bool]] = deque()  # (lsn, pg, is_cpl), not yet complete
        self._pgs: dict[int, _PG] = {}

    # ---- PGs ---------------------------------------------------------------------

    def add_pg(self, pg: int, members: list[str] | tuple[str, ...], scls: dict[str, int] | None = None) -> None:
        assert pg not in self._pgs, f"pg {pg} already tracked"
        members = tuple(members)
        assert len(members) == self.replicas, f"pg {pg}: {len(members)} members"
        assert len(set(members)) == self.replicas, f"pg {pg}: duplicate members {members}"
        state = _PG(members=members, scls={m: 0 for m in members})
        for m, scl in (scls or {}).items():
            assert m in state.scls, f"pg {pg}: {m} is not a member"
            assert 0 <= scl <= self._last_lsn, f"pg {pg}: scl {scl} > last lsn {self._last_lsn}"
            state.scls[m] = scl
        state.pgcl = self._quorum_scl(state)
        self._pgs[pg] = state
        self._advance()

    def has_pg(self, pg: int) -> bool:
        return pg in self._pgs

    def pgs(self) -> list[int]:
        return sorted(self._pgs)

    def members(self, pg: int) -> tuple[str, ...]:
        return self._pgs[pg].members

    def scls(self, pg: int) -> dict[str, int]:
        return dict(self._pgs[pg].scls)

    def scl(self, pg: int, member: str) -> int:
        return self._pgs[pg].scls[member]

    def pgcl(self, pg: int) -> int:
        return self._pgs[pg].pgcl

    # ---- records and acks ----------------------------------------------------------

    def add_record(self, lsn: int, pg: int, is_cpl: bool) -> None:
        assert lsn > self._last_lsn, f"lsn {lsn} <= last issued {self._last_lsn}"
        assert pg in self._pgs, f"record {lsn} for untracked pg {pg}"
        self._last_lsn = lsn
        self._pending.append((lsn, pg, bool(is_cpl)))
        self._advance()

    def ack(self, pg: int, member: str, scl: int) -> bool:
        """Record that `member`'s segment of `pg` has SCL `scl`. True if VCL or VDL moved.

        Reports lower than what is known (reordered replies) are ignored.
        """
        state = self._pgs[pg]
        assert member in state.scls, f"pg {pg}: ack from non-member {member}"
        assert scl <= self._last_lsn, f"pg {pg}: {member} reports scl {scl} > last issued {self._last_lsn}"
        if scl <= state.scls[member]:
            return False
        state.scls[member] = scl
        new = self._quorum_scl(state)
        assert new >= state.pgcl, f"pg {pg}: pgcl went back {state.pgcl} -> {new}"
        if new == state.pgcl:
            return False
        state.pgcl = new
        before = (self._vcl, self._vdl)
        self._advance()
        return (self._vcl, self._vdl) != before

    # ---- derived -------------------------------------------------------------------

    @property
    def vcl(self) -> int:
        return self._vcl

    @property
    def vdl(self) -> int:
        return self._vdl

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def start_lsn(self) -> int:
        return self._start

    def pending_count(self) -> int:
        return len(self._pending)

    def _quorum_scl(self, state: _PG) -> int:
        ranked = sorted(state.scls.values(), reverse=True)
        return ranked[self.write_quorum - 1]

    def _advance(self) -> None:
        pending, pgs = self._pending, self._pgs
        vcl, vdl = self._vcl, self._vdl
        while pending:
            lsn, pg, is_cpl = pending[0]
            if lsn > pgs[pg].pgcl:
                break
            pending.popleft()
            assert lsn > vcl, f"vcl order broken: {lsn} <= {vcl}"
            vcl = lsn
            if is_cpl:
                vdl = lsn
        assert vcl >= self._vcl and vdl >= self._vdl
        assert vdl <= vcl <= self._last_lsn, f"vdl {vdl} vcl {vcl} last {self._last_lsn}"
        self._vcl, self._vdl = vcl, vdl
