"""Finding boxes from a JSON file: where each finding is in each scan, so the rating view opens a
pair at its finding.

The layout is the synthetic cohort's `ground_truth.json` (and any tool can write it):
`{"volumes": {VolumeName: {"lesions": [{"label": ..., "bbox_norm": [z1, y1, x1, z2, y2, x2],
"side": ..., "location": ...}, ...]}}}` with the box as fractions 0-1 of the canonical array
(z inferior->superior), stop exclusive. The whole file is checked before anything is written;
a bad entry is named by volume and lesion number, and nothing of the file is stored.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from annotation.importers import BadInputError
from annotation.records import FindingBoxRecord
from annotation.schema import Scan
from annotation.store.findings import write_finding_boxes

if TYPE_CHECKING:
    from annotation.store import Store


def read_finding_boxes(path: Path) -> dict[str, list[FindingBoxRecord]]:
    """Volume name -> its boxes; raises BadInputError naming the volume and lesion at the first bad one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, None, f"cannot read: {exc}") from None
    except ValueError as exc:
        raise BadInputError(path, None, f"not valid JSON ({exc})") from None
    volumes = document.get("volumes") if isinstance(document, dict) else None
    if not isinstance(volumes, dict):
        raise BadInputError(path, None, 'expected an object with "volumes": {VolumeName: {"lesions": [...]}}')
    out: dict[str, list[FindingBoxRecord]] = {}
    for name, entry in volumes.items():
        lesions = entry.get("lesions", []) if isinstance(entry, dict) else None
        if not isinstance(lesions, list):
            raise BadInputError(path, None, f'volume {name!r}: "lesions" must be a list')
        out[name] = [_box(path, name, i, lesion) for i, lesion in enumerate(lesions, start=1)]
    return out


def _box(path: Path, name: str, number: int, lesion: Any) -> FindingBoxRecord:  # noqa: ANN401
    where = f"volume {name!r}, lesion {number}"
    if not isinstance(lesion, dict) or not isinstance(lesion.get("label"), str) or not lesion["label"].strip():
        raise BadInputError(path, None, f"{where}: needs a text \"label\"")
    box = lesion.get("bbox_norm")
    if not (isinstance(box, list) and len(box) == 6 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and math.isfinite(v) for v in box)):
        raise BadInputError(path, None, f'{where}: "bbox_norm" must be 6 numbers [z1, y1, x1, z2, y2, x2], got {box!r}')
    if not all(0.0 <= v <= 1.0 for v in box) or not all(box[i] < box[i + 3] for i in range(3)):
        raise BadInputError(path, None, f'{where}: "bbox_norm" must lie in 0-1 with each start below its stop, got {box}')
    side, location = lesion.get("side"), lesion.get("location") or lesion.get("lobe")
    return FindingBoxRecord(lesion["label"].strip(), tuple(float(v) for v in box),
                            side if isinstance(side, str) else None,
                            location if isinstance(location, str) else None)


def import_finding_boxes(store: Store, path: str | Path, source: str = "ground_truth") -> dict[str, int]:
    """Store the boxes of every scan the file names (replacing that source's earlier boxes).
    A volume the database does not know is refused by name, so a wrong file cannot half-land."""
    path = Path(path)
    boxes = read_finding_boxes(path)

    def work(session) -> dict[str, int]:  # noqa: ANN001
        ids = dict(session.execute(select(Scan.volume_name, Scan.id)
                                   .where(Scan.volume_name.in_(list(boxes)))).tuples().all())
        unknown = sorted(set(boxes) - set(ids))
        if unknown:
            raise BadInputError(path, None, f"{len(unknown)} volume(s) not in the database, e.g. {unknown[0]!r}; "
                                "import the scans first (ctvqa import ctrate/3drad)")
        write_finding_boxes(session, {ids[name]: records for name, records in boxes.items()}, source)
        return {"volumes": len(boxes), "boxes": sum(len(v) for v in boxes.values())}

    return store.db.write(work)
