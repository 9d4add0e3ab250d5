"""Where each finding is in a scan (ground-truth or annotated boxes): what lets the rating view
open a pair at the finding its words name instead of at the middle slice."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from annotation.records import FindingBoxRecord
from annotation.schema import FindingBox
from annotation.store.base import StoreArea


class FindingsArea(StoreArea):
    """Finding boxes per scan (part of `Store`)."""

    def finding_boxes(self, scan_id: int) -> list[FindingBoxRecord]:
        """The scan's finding boxes in the order they were stored."""
        with self.db.reading() as s:
            rows = s.scalars(select(FindingBox).where(FindingBox.scan_id == scan_id).order_by(FindingBox.id))
            return [FindingBoxRecord(b.label, tuple(b.box), b.side, b.location, b.source) for b in rows]

    def set_finding_boxes(self, boxes: Mapping[int, Sequence[FindingBoxRecord]], source: str = "ground_truth") -> int:
        """Replace the boxes of `source` on each scan id given (one transaction: all or nothing);
        returns how many boxes were written. Boxes of other sources stay."""
        def work(session: Session) -> int:
            write_finding_boxes(session, boxes, source)
            return sum(len(v) for v in boxes.values())

        return self.db.write(work)


def write_finding_boxes(session: Session, boxes: Mapping[int, Sequence[FindingBoxRecord]], source: str) -> None:
    """`set_finding_boxes` inside the caller's transaction (the importer checks a file, then writes)."""
    if boxes:
        session.execute(delete(FindingBox).where(FindingBox.scan_id.in_(list(boxes)), FindingBox.source == source))
    session.add_all(FindingBox(scan_id=scan_id, label=b.label, side=b.side, location=b.location,
                               box=[float(v) for v in b.box], source=source)
                    for scan_id, records in boxes.items() for b in records)
