"""A scan's CT-RATE `metadata.csv` row: what it says, and which of it a file's header lacks.

CT-RATE keeps each volume's rescale slope/intercept, pixel spacing and orientation in its table
rather than (reliably) in the NIfTI header, and its own preprocessing applies them. The rule here:

* **The header wins wherever it has real values**: it describes the array actually stored (a
  volume resampled after acquisition keeps a stale table row). A disagreement is recorded in
  ``meta["metadata_conflicts"]`` and logged, never silently used.
* **Geometry** (spacing, orientation, position) comes from the row when the header has none:
  an identity affine (unit voxels, no rotation: what a volume saved with ``np.eye(4)`` carries,
  as CT-RATE's released volumes do) or a zero/negative voxel size. The array's axes i, j, k
  are then taken to run along the row's ImageOrientationPatient row direction, column direction
  and their cross product, as DICOM stores them.
* **Rescale** comes from the row when the header has no scaling of its own (NIfTI scl_slope
  unset or 1/0; NRRD and MetaImage have none) and the values are not already in HU. Stored CT
  values are non-negative apart from the padding outside the field of view (the lowest value,
  -1024 or below), while a chest CT in HU has air or lung between -1100 and -200: if more than
  1 % of the voxels (padding aside) lie there as stored, the volume is taken to be in HU already and the rescale is not
  applied (a CT-RATE row's intercept of -1024 would shift it by a kilo-HU otherwise); the
  volume's meta says so.
* DICOM headers always carry their geometry and rescale, so a row never changes a DICOM series.
"""
from __future__ import annotations

import ast
import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.volume import CTReadError, add_note, suffix_of

log = logging.getLogger(__name__)

#: CT-RATE column names read here (the others, personal ones included, are never read).
COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing", "ImageOrientationPatient",
           "ImagePositionPatient")
#: Values from air to fat (HU) do not occur in stored CT values, padding aside (module doc);
#: padding is the lowest value and at most -1024.
_AIR_HU_AT_LEAST, _HU_BELOW_STORED, _PADDING_AT_MOST = -1100, -200, -1024
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ScanMetadata:
    """The parts of a metadata row that place and calibrate voxels; None where the row is silent."""

    slope: float | None = None
    intercept: float | None = None
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm
    orientation: tuple[float, ...] | None = None  # DICOM ImageOrientationPatient, LPS
    position: tuple[float, float, float] | None = None  # DICOM ImagePositionPatient of voxel 0, LPS

    @property
    def has_rescale(self) -> bool:
        return self.slope is not None or self.intercept is not None


def _numbers(value: Any, key: str, count: int, where: str) -> tuple[float, ...] | None:
    """A list cell as CT-RATE writes it: "[0.75, 0.75]", "['1', '0', ...]" or DICOM's "1\\0\\0"."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, list | tuple | np.ndarray):
        items = list(value)
    else:
        text = str(value).strip()
        if not text or text.lower() in ("nan", "none"):
            return None
        try:
            parsed = ast.literal_eval(text) if text[0] in "[(" else [p for p in text.replace("\\", ",").split(",") if p.strip()]
            items = list(parsed) if isinstance(parsed, list | tuple) else [parsed]
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: {key} {text!r} is not a list of {count} numbers") from None
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} {value!r} is not a list of {count} numbers") from None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise ValueError(f"{where}: {key} {value!r} must be {count} finite numbers")
    return numbers


def _number(value: Any, key: str, where: str) -> float | None:
    found = _numbers(value, key, 1, where)
    return None if found is None else found[0]


def parse_metadata_row(row: Mapping[str, Any] | None, where: str = "metadata row") -> ScanMetadata | None:
    """The calibrating parts of a CT-RATE row; ValueError naming the key for a malformed cell."""
    if row is None:
        return None
    if isinstance(row, ScanMetadata):
        return row
    slope = _number(row.get("RescaleSlope"), "RescaleSlope", where)
    if slope is not None and slope == 0:
        raise ValueError(f"{where}: RescaleSlope must not be 0")
    intercept = _number(row.get("RescaleIntercept"), "RescaleIntercept", where)
    xy = _numbers(row.get("XYSpacing"), "XYSpacing", 2, where)
    z = _number(row.get("ZSpacing"), "ZSpacing", where)
    spacing = None
    if xy is not None and z is not None:
        spacing = (z, xy[0], xy[1])
        if min(spacing) <= 0:
            raise ValueError(f"{where}: spacing must be positive, got XYSpacing {list(xy)} ZSpacing {z}")
    elif xy is not None or z is not None:
        raise ValueError(f"{where}: XYSpacing and ZSpacing must be given together")
    orientation = _numbers(row.get("ImageOrientationPatient"), "ImageOrientationPatient", 6, where)
    if orientation is not None:
        r, c = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        if abs(np.linalg.norm(r) - 1) > 0.01 or abs(np.linalg.norm(c) - 1) > 0.01 or abs(r @ c) > 0.01:
            raise ValueError(f"{where}: ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors")
    position = _numbers(row.get("ImagePositionPatient"), "ImagePositionPatient", 3, where)
    return ScanMetadata(slope, intercept, spacing, orientation, position)  # type: ignore[arg-type]


def metadata_for(path: str | Path, row: Mapping[str, Any] | ScanMetadata | None) -> ScanMetadata | None:
    """`parse_metadata_row` whose errors become a CTReadError naming the file."""
    try:
        return parse_metadata_row(row)
    except ValueError as exc:
        raise CTReadError(path, str(exc)) from None


def read_metadata_table(path: str | Path) -> dict[str, dict[str, str]]:
    """CT-RATE `metadata.csv` rows by VolumeName (only the columns in `COLUMNS`); every row is
    parsed once here, so a bad cell stops the command naming its line before any scan is read."""
    path = Path(path)
    table: dict[str, dict[str, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "VolumeName" not in (reader.fieldnames or ()):
                raise ValueError(f"{path}: no VolumeName column (a CT-RATE metadata.csv is expected)")
            for record in reader:
                name = (record.get("VolumeName") or "").strip()
                if not name:
                    raise ValueError(f"{path}, line {reader.line_num}: empty VolumeName")
                row = {k: record[k] for k in COLUMNS if record.get(k) is not None}
                parse_metadata_row(row, f"{path}, line {reader.line_num}")
                table[name] = row
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the metadata table ({exc})") from None
    return table


def row_for(table: Mapping[str, Mapping[str, Any]] | None, path: str | Path) -> Mapping[str, Any] | None:
    """The row of a volume file: by its file name, or by that name without its extension."""
    if not table:
        return None
    name = Path(path).name
    if name in table:
        return table[name]
    suffix = suffix_of(path)
    stem = name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name
    for candidate in (stem, stem + ".nii.gz", stem + ".nii"):
        if candidate in table:
            return table[candidate]
    return None


#: What a header without geometry holds, as an (i, j, k) -> RAS 3x3: nibabel's `np.eye(4)`, and
#: ITK's defaults (unit spacing, identity direction in LPS).
PLACEHOLDER_NIFTI = np.eye(3)
PLACEHOLDER_ITK = _LPS_TO_RAS


def header_lacks_geometry(affine: np.ndarray, placeholder: np.ndarray, voxel_sizes: Any = None) -> bool:
    """True for a placeholder affine (`placeholder` 3x3 at the origin) or zero/negative voxel sizes."""
    affine = np.asarray(affine, dtype=float)
    if voxel_sizes is not None and not all(np.isfinite(v) and v > 0 for v in voxel_sizes):
        return True
    return bool(np.allclose(affine[:3, :3], placeholder, atol=1e-6) and np.allclose(affine[:3, 3], 0, atol=1e-6))


def geometry_affine(meta: ScanMetadata, header_affine: np.ndarray) -> np.ndarray:
    """The (i, j, k) -> RAS affine the row gives an array stored with i, j, k = x, y, slice.

    Spacing from the row (else the header's column lengths, 1 mm where those are 0); orientation
    and position from the row, else the header's."""
    header = np.asarray(header_affine, dtype=float)
    norms = np.linalg.norm(header[:3, :3], axis=0)
    sx, sy, sz = (meta.spacing[2], meta.spacing[1], meta.spacing[0]) if meta.spacing else tuple(norms)
    if meta.orientation is not None:
        r, c = np.asarray(meta.orientation[:3]), np.asarray(meta.orientation[3:])
        directions = _LPS_TO_RAS @ np.column_stack([r, c, np.cross(r, c)])
    else:
        directions = header[:3, :3] / np.where(norms > 0, norms, 1.0)
        directions[:, norms <= 0] = np.eye(3)[:, norms <= 0]
    affine = np.eye(4)
    affine[:3, :3] = directions * np.array([sx, sy, sz])
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(meta.position) if meta.position is not None else header[:3, 3]
    return affine


def rescale_needed(stored: np.ndarray, meta: ScanMetadata) -> bool:
    """Whether the row's rescale applies to these stored values (module doc). A strided sample
    keeps this cheap on a 500-slice volume."""
    slope = meta.slope if meta.slope is not None else 1.0
    intercept = meta.intercept if meta.intercept is not None else 0.0
    if slope == 1.0 and intercept == 0.0:
        return False
    flat = np.ravel(stored, order="K")  # a view in memory order: reshape(-1) copies a Fortran-ordered volume
    sample = flat[:: max(1, flat.size // 2_000_000)]
    lowest = sample.min()
    body = sample[sample != lowest] if lowest <= _PADDING_AT_MOST else sample  # padding outside the field of view
    hu_like = np.count_nonzero((body >= _AIR_HU_AT_LEAST) & (body < _HU_BELOW_STORED))
    return body.size == 0 or hu_like <= 0.01 * body.size


def apply_rescale(array: np.ndarray, meta: ScanMetadata) -> None:
    """slope * stored + intercept, in place on a float32 array."""
    if meta.slope not in (None, 1.0):
        array *= np.float32(meta.slope)
    if meta.intercept not in (None, 0.0):
        array += np.float32(meta.intercept)


def conflicts(meta: ScanMetadata, spacing_zyx: tuple[float, float, float]) -> list[str]:
    """Where the row disagrees with a header that won (spacing by more than 1 %)."""
    if meta.spacing is None or np.allclose(meta.spacing, spacing_zyx, rtol=0.01):
        return []
    return [f"metadata spacing {list(meta.spacing)} differs from the header's {[round(s, 4) for s in spacing_zyx]} "
            "(the header's is used)"]


@dataclass
class Resolved:
    """What a single-file reader takes from the row: the affine to use and what to tell the user."""

    affine: np.ndarray
    used: list[str]
    conflicts: list[str]

    def record(self, meta: dict[str, Any], rescaled: ScanMetadata | None) -> None:
        """Write `metadata_applied`, the conflicts and a user-facing note into a volume's meta."""
        used = list(self.used)
        if rescaled is not None:
            used.append(f"rescale (slope {rescaled.slope if rescaled.slope is not None else 1:g}, "
                        f"intercept {rescaled.intercept if rescaled.intercept is not None else 0:g})")
        if used:
            meta["metadata_applied"] = used
            add_note(meta, "from the metadata row: " + ", ".join(used))
        if self.conflicts:
            meta["metadata_conflicts"] = self.conflicts
            for text in self.conflicts:
                log.warning("%s", text)


def resolve_geometry(path: str | Path, affine_ijk: np.ndarray, placeholder: np.ndarray, row: ScanMetadata | None,
                     voxel_sizes: Any = None) -> Resolved:
    """The header's (i, j, k) -> RAS affine, or the row's where the header has none (module doc).

    `voxel_sizes`: the header's own sizes where the affine is built from them (NIfTI pixdim), so a
    zero the library replaced by 1 mm is still seen. A zero/negative size with no row spacing is refused."""
    affine_ijk = np.asarray(affine_ijk, dtype=float)
    bad_sizes = voxel_sizes is not None and not all(np.isfinite(v) and v > 0 for v in voxel_sizes)
    if not header_lacks_geometry(affine_ijk, placeholder, voxel_sizes):
        spacing = tuple(float(v) for v in np.linalg.norm(affine_ijk[:3, :3], axis=0)[::-1])
        return Resolved(affine_ijk, [], conflicts(row, spacing) if row is not None else [])  # type: ignore[arg-type]
    if bad_sizes and (row is None or row.spacing is None):
        raise CTReadError(path, f"zero or negative voxel size {[float(v) for v in voxel_sizes]} mm in the header "
                                "(give the scan's metadata row with its spacing, or fix the header)")
    if row is None:
        return Resolved(affine_ijk, [], [])
    used = [name for name, value in (("spacing", row.spacing), ("orientation", row.orientation),
                                     ("position", row.position)) if value is not None]
    return Resolved(geometry_affine(row, affine_ijk) if used else affine_ijk, used, [])


def rescale_from_row(stored: np.ndarray, row: ScanMetadata | None, header_scaled: bool) -> ScanMetadata | None:
    """The row, when its rescale is to be applied to `stored` (module doc), else None."""
    if row is None or not row.has_rescale or header_scaled or not rescale_needed(stored, row):
        return None
    return row


#: The file beside a training/evaluation set that carries its scans' rows (`write_metadata_table`).
TABLE_FILE = "metadata.csv"


def write_metadata_table(path: str | Path, rows: Mapping[str, Mapping[str, Any]]) -> Path:
    """Rows by VolumeName as a CT-RATE-style metadata.csv (list cells as JSON), readable by
    `read_metadata_table`: how calibration travels to another process (finetuning under torchrun)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for name, row in sorted(rows.items()):
            writer.writerow({"VolumeName": name, **{k: json.dumps(v) if isinstance(v, list | tuple) else v
                                                    for k, v in row.items() if k in COLUMNS and k != "VolumeName"}})
    return path


def table_beside(folder: str | Path) -> dict[str, dict[str, str]] | None:
    """The `TABLE_FILE` rows in `folder`, or None when there is none."""
    path = Path(folder) / TABLE_FILE
    return read_metadata_table(path) if path.is_file() else None
