"""First-run preparation of `ctvqa demo`: a small synthetic cohort, its database, a rating queue
and the default model registered, all under one work folder.

Qt-free on purpose: the slow part runs before any window exists, and later runs find the
`demo.json` marker and skip straight to the viewer (seconds, not minutes). A marker from an
older version, or a half-finished first run, is repaired rather than trusted: the cohort is only
regenerated when its files are missing, and the import and queue steps are idempotent.

The scan the demo opens is the one the demo annotator rates first, so the CT on screen, the
chat's pre-filled question and the rating panel's first pair all concern the same patient.
"""
from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DEMO_PATIENTS = 4
DEMO_SEED = 7
DEMO_ANNOTATOR = "demo"
DEMO_QUEUE_SIZE = 24
MARKER = "demo.json"
#: Findings a radiologist can see on one axial slice, most conspicuous first, with the window
#: each is read in. The demo opens on the first of these that its scan has.
SHOWABLE_FINDINGS: tuple[tuple[str, str], ...] = (
    ("Pleural effusion", "mediastinum"), ("Cardiomegaly", "mediastinum"), ("Pericardial effusion", "mediastinum"),
    ("Consolidation", "lung"), ("Lung nodule", "lung"), ("Emphysema", "lung"), ("Lung opacity", "lung"),
    ("Atelectasis", "lung"), ("Lymphadenopathy", "mediastinum"), ("Hiatal hernia", "mediastinum"),
)
_SETUP_STEPS = 3  # after the patients: database import, rating queue, model registration

Progress = Callable[[str, int, int], None]  # (stage, steps done, steps in all)


@dataclass(frozen=True)
class DemoSetup:
    """What the viewer needs to open: the database, the scan, the finding to show and ask about."""

    workdir: str
    db_url: str
    volume_name: str
    volume_path: str
    finding: str
    question: str
    window: str
    slice_index: int
    annotator: str
    seconds_to_build: float

    @property
    def marker(self) -> Path:
        return Path(self.workdir) / MARKER

    @property
    def cohort(self) -> Path:
        return Path(self.workdir) / "cohort"


def prepare_demo(workdir: str | Path, progress: Progress | None = None, patients: int = DEMO_PATIENTS,
                 size: tuple[int, int, int] | None = None) -> DemoSetup:
    """Build (first run) or reuse (later runs) the demo cohort and database in `workdir`.

    `patients` and `size` exist for quick tests; the demo itself uses the defaults."""
    workdir = Path(workdir).expanduser().resolve()
    return existing_setup(workdir) or _build(workdir, progress or (lambda stage, done, total: None), patients, size)


def existing_setup(workdir: str | Path) -> DemoSetup | None:
    """The setup an earlier run left in `workdir`, if it is complete and from this version."""
    workdir = Path(workdir).expanduser().resolve()
    try:
        recorded = json.loads((workdir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or set(recorded) != {f.name for f in fields(DemoSetup)}:
        return None
    setup = DemoSetup(**recorded)
    complete = Path(setup.volume_path).is_file() and (workdir / "ctvqa.sqlite").is_file()
    return setup if complete and Path(setup.workdir) == workdir else None


def _build(workdir: Path, progress: Progress, patients: int, size: tuple[int, int, int] | None) -> DemoSetup:
    # deferred: SQLAlchemy and the phantom generator load only on a first run that builds the demo
    from annotation.importers.ctrate import import_ctrate
    from annotation.importers.finding_boxes import import_finding_boxes
    from annotation.store import Store

    start = time.perf_counter()
    total = patients + _SETUP_STEPS
    cohort = workdir / "cohort"
    if not _cohort_complete(cohort):
        from annotation.synth import write_cohort  # deferred: see above

        extra = {"size": size} if size else {}
        write_cohort(cohort, patients, seed=DEMO_SEED, **extra,
                     progress=lambda done, _n: progress("synthetic cohort", done, total))
    progress("database import", patients, total)
    db_url = f"sqlite:///{workdir / 'ctvqa.sqlite'}"
    store = Store.create(db_url)
    try:
        import_ctrate(store.db, cohort / "reports.csv", cohort / "labels.csv", cohort / "metadata.csv",
                      volumes=cohort / "volumes")
        import_finding_boxes(store, cohort / "ground_truth.json")  # pairs open at their findings
        progress("rating queue", patients + 1, total)
        if not store.queue(DEMO_ANNOTATOR):
            n_pairs = sum(store.count_qa_pairs().values())
            store.assign([DEMO_ANNOTATOR], per_annotator=min(DEMO_QUEUE_SIZE, n_pairs), overlap=0, seed=DEMO_SEED)
        progress("model registration", patients + 2, total)
        if store.model_version("default") is None:
            store.register_model_version("default", None, kind="default",
                                         provenance={"source": "embedded model shipped in model/default"})
        scan, finding, window = _demo_scan(store)
    finally:
        store.close()
    setup = DemoSetup(
        workdir=str(workdir), db_url=db_url, volume_name=scan.volume_name, volume_path=str(scan.path),
        finding=finding, question=existence_question(finding), window=window,
        slice_index=finding_slice(cohort / "ground_truth.json", scan.volume_name, finding),
        annotator=DEMO_ANNOTATOR, seconds_to_build=round(time.perf_counter() - start, 1))
    (workdir / MARKER).write_text(json.dumps(asdict(setup), indent=2) + "\n", encoding="utf-8")
    progress("ready", total, total)
    return setup


def _cohort_complete(cohort: Path) -> bool:
    """Every table is there and every volume the labels name exists (a run killed half-way is not)."""
    needed = ("labels.csv", "reports.csv", "metadata.csv", "ground_truth.json")
    if not all((cohort / name).is_file() for name in needed):
        return False
    with (cohort / "labels.csv").open(newline="", encoding="utf-8") as fh:
        names = [row["VolumeName"] for row in csv.DictReader(fh)]
    return bool(names) and all((cohort / "volumes" / name).is_file() for name in names)


def showable_finding(labels: dict[str, int]) -> tuple[str, str] | None:
    """The most conspicuous positive finding of a scan and its window (any positive label, in the
    mediastinal window, when none of the conspicuous ones is present); None for a normal scan."""
    found = next(((label, window) for label, window in SHOWABLE_FINDINGS if labels.get(label)), None)
    return found or next(((label, "mediastinum") for label, value in labels.items() if value), None)


def _demo_scan(store: Any) -> tuple[Any, str, str]:
    """The scan of the annotator's first pair when it has a finding, else the scan with the most
    conspicuous findings; with the finding to ask about and its window."""
    scans = {scan.id: scan for scan in store.scans() if scan.path}
    if not scans:
        raise ValueError(f"{store.url}: the demo cohort was imported without volume files")
    queue = store.queue(DEMO_ANNOTATOR)
    first = store.qa_pair(queue[0].qa_id).scan_id if queue else None
    if first in scans and (found := showable_finding(store.labels(first))):
        return scans[first], *found
    conspicuous = dict(SHOWABLE_FINDINGS)

    def rank(scan: Any) -> tuple[int, int, str]:
        labels = store.labels(scan.id)
        return (-sum(bool(v) for k, v in labels.items() if k in conspicuous), -sum(labels.values()),
                scan.volume_name)

    chosen = min(scans.values(), key=rank)
    found = showable_finding(store.labels(chosen.id))
    if found is None:
        raise ValueError(f"{store.url}: no scan of the demo cohort has a finding to show")
    return chosen, *found


def existence_question(finding: str) -> str:
    """3D-RAD's first existence template for the finding: exactly what the chat's template picker
    writes for it, so the pre-filled question is a benchmark question with Yes/No choices."""
    # deferred: read only when a question is pre-filled
    from annotation.qa_templates import question_templates

    return question_templates()["existence_detection"][0].format(label=finding.lower())


def finding_slice(ground_truth: Path, volume_name: str, finding: str) -> int:
    """The axial slice through the centre of the finding (from the cohort's ground truth); the
    middle slice when the finding has no recorded position."""
    try:
        document = json.loads(ground_truth.read_text(encoding="utf-8"))
        lesions = document["volumes"][volume_name]["lesions"]
        n_slices = int(document["size"][0])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ground_truth}: no ground truth for {volume_name} ({exc!r})") from None
    centres = [lesion["centre_voxel"][0] for lesion in lesions if lesion.get("label") == finding]
    return int(round(centres[0])) if centres else n_slices // 2
