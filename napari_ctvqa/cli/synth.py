"""`ctvqa synth`: write the synthetic chest CT cohort (volumes, CT-RATE tables, 3D-RAD QA)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from napari_ctvqa.cli._common import fail, progress_bar


def _triple(text: str | None, what: str, kind: type) -> tuple | None:
    """Parse "Z,Y,X" into three positive numbers, failing with one clear line."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        fail(f"--{what} must be three numbers Z,Y,X, got {text!r}")
    if len(values) != 3 or min(values) <= 0:
        fail(f"--{what} must be three positive numbers Z,Y,X, got {text!r}")
    return values


def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the cohort into (created if missing).")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients (2-4 scans each).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed writes byte-identical files.")] = 0,
    size: Annotated[str, typer.Option("--size", help="Volume size Z,Y,X in voxels.")] = "64,256,256",
    spacing: Annotated[str | None, typer.Option("--spacing", help="Voxel size Z,Y,X in mm (default: a 320x358x358 mm field of view).")] = None,
    valid_frac: Annotated[float, typer.Option("--valid-frac", min=0.0, max=0.95, help="Fraction of patients in the valid split.")] = 0.2,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes rendering patients (default: up to 2 for 4+ patients); output does not depend on it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write a synthetic cohort: volumes/*.nii.gz, reports.csv, labels.csv, metadata.csv (CT-RATE
    format), qa/{train,valid}/TaskN_*/ (3D-RAD CSVs, all six tasks) and ground_truth.json."""
    from annotation.synth import write_cohort

    size_zyx = _triple(size, "size", int)
    spacing_zyx = _triple(spacing, "spacing", float)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    try:
        with progress_bar("synthesising patients", total=patients) as update:
            summary = write_cohort(out, patients, seed=seed, size=size_zyx, spacing=spacing_zyx,
                                   valid_frac=valid_frac, progress=update, workers=workers)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(asdict(summary)))
        return
    typer.echo(f"wrote {summary.volumes} volumes of {sum(summary.patients.values())} patients "
               f"({', '.join(f'{k} {v}' for k, v in summary.patients.items())}) to {out}")
    typer.echo(f"QA rows per task: {summary.qa_rows}; temporal answers: {summary.temporal_answers}")
    typer.echo(f"time taken: {summary.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    """Add `ctvqa synth` to the app."""
    app.command("synth")(synth)
