"""`ctvqa` commands around the annotation database: `db init|upgrade`, `import 3drad|ctrate|m3d-vqa`,
`ratings import|export`, `assign`, `batches list|remove`, `progress`, `agreement`, `export`.

Every command takes `--db` (else `$CTVQA_DB`, else the per-user SQLite file) and calls the same
Store/importer functions the widgets use. A fresh database gets its schema on first use; an
outdated one is only migrated by `db upgrade`.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from napari_ctvqa.cli._common import fail, progress_bar

if TYPE_CHECKING:
    from annotation.store import Store

DbOption = Annotated[str | None, typer.Option(
    "--db", help="Database URL or SQLite file (default: $CTVQA_DB, else the per-user SQLite file).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

db_app = typer.Typer(help="Create or migrate the annotation database.", no_args_is_help=True)
import_app = typer.Typer(help="Import QA pairs and CT metadata (3D-RAD, CT-RATE, M3D-VQA).",
                         no_args_is_help=True)
ratings_app = typer.Typer(help="Ratings in and out as CSV (spreadsheets, other tools).",
                          no_args_is_help=True)
batches_app = typer.Typer(help="List or remove rating-queue batches made by `ctvqa assign`.",
                          no_args_is_help=True)

_USER_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, FileNotFoundError)


def _open(db: str | None, migrate: bool = False) -> Store:
    """The Store at `db`: `migrate` runs the migrations (db init/upgrade); otherwise an empty
    database gets the schema and an outdated one is refused with a message (a StoreError, which
    the CLI's error handler prints as one line)."""
    from annotation.store import Store

    return Store.create(db) if migrate else Store(db)


def _run(action: Any) -> Any:  # noqa: ANN401
    """Turn the library's user errors (bad rows, unknown names) into one-line CLI failures."""
    try:
        return action()
    except _USER_ERRORS as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))


def _print(data: Any, as_json: bool, text: str) -> None:  # noqa: ANN401
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def _summary_text(summary: Any) -> str:  # noqa: ANN401
    per_task = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_task.items()))
    return (f"{summary.source}: {summary.files} file(s), {summary.rows} rows, {summary.added} new QA "
            f"pairs, {summary.scans_added} new scans in {summary.seconds:.1f} s"
            + (f" ({per_task})" if per_task else ""))


# ---------------------------------------------------------------------- db
@db_app.command("init")
def db_init(db: DbOption = None) -> None:
    """Create the database schema (or bring an existing one to the newest version)."""
    store = _open(db, migrate=True)
    typer.echo(f"database ready: {store.url}")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Apply pending schema migrations."""
    from annotation.db import current_revision

    from annotation.db import resolve_url, run_migrations

    url = resolve_url(db, create_dir=True)
    before = current_revision(url)
    run_migrations(url)
    after = current_revision(url)
    _print({"url": url, "from": before, "to": after}, as_json, f"{url}: {before or 'empty'} -> {after}")


# ---------------------------------------------------------------------- imports
@import_app.command("3drad")
def import_3drad_cmd(
    directory: Annotated[Path, typer.Argument(help="A 3D-RAD split: folder of TaskN_Name/*.csv.",
                                              exists=True, file_okay=False)],
    volumes: Annotated[Path | None, typer.Option(help="Folder with the CT volumes (sets scan paths).")] = None,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Import a 3D-RAD split; re-importing adds nothing."""
    from annotation.importers.threedrad import import_3drad

    store = _open(db)
    with progress_bar("3D-RAD files (check, then write)") as update:
        summary = _run(lambda: import_3drad(store.db, directory, volumes, progress=update))
    _print(asdict(summary), as_json, _summary_text(summary))


@import_app.command("ctrate")
def import_ctrate_cmd(
    reports: Annotated[Path, typer.Option(help="CT-RATE reports CSV.", exists=True, dir_okay=False)],
    labels: Annotated[Path, typer.Option(help="CT-RATE multi-abnormality labels CSV.", exists=True, dir_okay=False)],
    metadata: Annotated[Path | None, typer.Option(help="CT-RATE metadata CSV (spacing, study date).",
                                                  exists=True, dir_okay=False)] = None,
    volumes: Annotated[Path | None, typer.Option(help="Folder with the CT volumes (sets scan paths).")] = None,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Register CT-RATE scans, labels and reports, and generate QA pairs for all six tasks."""
    from annotation.importers.ctrate import import_ctrate

    store = _open(db)
    with progress_bar("CT-RATE scans") as update:
        summary = _run(lambda: import_ctrate(store.db, reports, labels, metadata, volumes, progress=update))
    _print(asdict(summary), as_json, _summary_text(summary))


@import_app.command("m3d-vqa")
def import_m3d_cmd(
    csv_file: Annotated[Path, typer.Argument(help="M3D-VQA CSV (Image Path, Text, Question Type, ...).",
                                             exists=True, dir_okay=False)],
    data_root: Annotated[Path | None, typer.Option(help="Folder the Image Path column is relative to.")] = None,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Import an M3D-VQA multiple-choice CSV."""
    from annotation.importers.m3d_vqa import import_m3d_vqa

    store = _open(db)
    with progress_bar("M3D-VQA rows") as update:
        summary = _run(lambda: import_m3d_vqa(store.db, csv_file, data_root, progress=update))
    _print(asdict(summary), as_json, _summary_text(summary))


@import_app.command("boxes")
def import_boxes_cmd(
    json_file: Annotated[Path, typer.Argument(help="Finding boxes JSON (the synthetic cohort's ground_truth.json layout).",
                                              exists=True, dir_okay=False)],
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Import where each finding is in each scan, so the rating view opens pairs at their findings."""
    from annotation.importers.finding_boxes import import_finding_boxes

    store = _open(db)
    result = _run(lambda: import_finding_boxes(store, json_file))
    _print(result, as_json, f"{json_file}: {result['boxes']} finding boxes on {result['volumes']} scans")


# ---------------------------------------------------------------------- ratings
@ratings_app.command("import")
def ratings_import_cmd(
    csv_file: Annotated[Path, typer.Argument(help="Ratings CSV (VolumeName,Question,Annotator,...).",
                                             exists=True, dir_okay=False)],
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Import ratings made elsewhere; a bad row refuses the whole file."""
    from annotation.importers.ratings_csv import import_ratings_csv

    store = _open(db)
    result = _run(lambda: import_ratings_csv(store, csv_file))
    _print(result, as_json, f"{csv_file}: {result['rows']} ratings ({result['inserted']} new, "
                            f"{result['updated']} updated, {result['unchanged']} unchanged)")


@ratings_app.command("export")
def ratings_export_cmd(
    csv_file: Annotated[Path, typer.Argument(help="CSV file to write.", dir_okay=False)],
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Write every finished rating as a ratings CSV."""
    from annotation.importers.ratings_csv import export_ratings_csv

    store = _open(db)
    n = _run(lambda: export_ratings_csv(store, csv_file))
    _print({"path": str(csv_file), "rows": n}, as_json, f"wrote {n} ratings to {csv_file}")


# ---------------------------------------------------------------------- queues & curation
def assign_cmd(
    annotators: Annotated[str, typer.Option(help="Comma-separated annotator names, e.g. a,b,c.")],
    per_annotator: Annotated[int, typer.Option(help="Pairs per annotator (shared ones included).")],
    overlap: Annotated[int, typer.Option(help="Pairs rated by every annotator (for agreement).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the draw.")] = 0,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task keys to draw from (default all).")] = None,
    batch: Annotated[str | None, typer.Option(help="Batch name (default: named after the request).")] = None,
    add: Annotated[bool, typer.Option("--add", help="Draw a further batch even if this one exists.")] = False,
    repeat: Annotated[float, typer.Option(help="Share of each annotator's pairs shown to them a second time, "
                                                "later and blind (intra-rater agreement), e.g. 0.1.")] = 0.0,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Build rating queues: new pairs per annotator, `--overlap` of them shared, evenly across tasks.
    The same request again changes nothing; `--add` draws more; `ctvqa batches` lists and removes."""
    store = _open(db)
    names = [a.strip() for a in annotators.split(",") if a.strip()]
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    plan = _run(lambda: store.assign(names, per_annotator, overlap, seed=seed, tasks=task_list,
                                     batch=batch, add=add, repeat=repeat))
    if not plan["changed"]:
        text = (f"{plan['batch']}: already assigned ({sum(map(len, plan['annotators'].values()))} queue "
                "entries); nothing changed (--add draws more)")
    else:
        repeats = sum(len(v) for v in plan["repeats"].values())
        text = (f"{plan['batch']}: {len(names)} annotator(s) x {per_annotator} pairs, {len(plan['shared'])} "
                f"shared{f', {repeats} repeats' if repeats else ''}; per task {plan['per_task']}")
    _print(plan, as_json, text)


@batches_app.command("list")
def batches_list_cmd(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every assignment batch: annotators, pairs, shared pairs, how many are done."""
    found = _open(db).batches()
    if as_json:
        _print([asdict(b) for b in found], True, "")
        return
    if not found:
        typer.echo("no assignment batches yet (ctvqa assign makes them)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("batch", "created (UTC)", "annotators", "pairs", "shared", "done")
    for b in found:
        table.add_row(b.name, f"{b.created_at:%Y-%m-%d %H:%M}", ",".join(b.annotators), str(b.pairs),
                      str(b.shared), f"{b.done}/{b.assignments}")
    Console().print(table)


@batches_app.command("remove")
def batches_remove_cmd(
    name: Annotated[str, typer.Argument(help="The batch to take out of the queues (see `batches list`).")],
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Remove a batch from its annotators' queues; entries already rated, skipped or flagged stay."""
    result = _run(lambda: _open(db).remove_batch(name))
    _print(result, as_json, f"{name}: removed {result['removed']} queue entries"
                            + (f", kept {result['kept']} already rated" if result["kept"] else ""))


def progress_cmd(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Per annotator: assigned, rated, skipped, flagged and time spent."""
    from rich.console import Console
    from rich.table import Table

    stats = _open(db).annotator_stats()
    if as_json:
        _print([asdict(s) for s in stats], True, "")
        return
    table = Table("annotator", "kind", "assigned", "rated", "skipped", "flagged", "minutes")
    for s in stats:
        table.add_row(s.name, s.kind, str(s.assigned), str(s.rated), str(s.skipped), str(s.flagged),
                      f"{s.seconds / 60:.1f}")
    Console().print(table)


def agreement_cmd(
    top_k: Annotated[int, typer.Option(help="K of Top-K overlap and NDCG@K (capped at the common pairs, shown as k).")] = 100,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples behind the confidence intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    disagreements: Annotated[int, typer.Option(help="List the N most-disagreed pairs (to adjudicate).")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Save the agreement heatmaps (3D-RAD figures 7-8) to this PNG.",
                                              dir_okay=False)] = None,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Rater agreement: Top-K, NDCG@K, Spearman, Kendall, MAE, kappa per rater pair; ordinal alpha,
    weighted kappa and ICC per dimension with bootstrap intervals; intra-rater on repeats."""
    store = _open(db)
    if bootstrap < 0 or disagreements < 0:
        fail("--bootstrap and --disagreements must not be negative")
    report = _run(lambda: store.agreement_report(top_k=top_k, n_boot=bootstrap, seed=seed,
                                                 disagreements=max(disagreements, 1)))
    if plot is not None:
        from annotation.agreement.plots import report_title, save_agreement_png

        if report.per_rater.empty:
            fail("nothing to plot: no two raters have rated the same QA pairs yet")
        _run(lambda: save_agreement_png(report.per_rater, report.reliability, plot, report_title(report)))
    if as_json:
        data = report.to_json()
        data["disagreements"] = data["disagreements"][:disagreements]
        _print(data, True, "")
        return
    if report.pairwise.empty:
        typer.echo("no pair of raters has rated the same QA pairs yet")
        return
    from napari_ctvqa.cli._agreement_tables import print_report

    print_report(report, disagreements)
    if plot is not None:
        typer.echo(f"heatmaps saved to {plot}")


def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="One of 3drad, m3d-vqa, jsonl, hf.")],
    out: Annotated[Path, typer.Option(help="New or empty output folder.")],
    min_mean: Annotated[float, typer.Option(help="Keep pairs whose mean score is at least this.")] = 3.0,
    min_dim: Annotated[float, typer.Option(help="... and whose every dimension is at least this.")] = 3.0,
    require_consistent: Annotated[bool, typer.Option(help="... and judged consistent with the report.")] = False,
    cap_per_question: Annotated[int, typer.Option(
        help="At most this many identical open question-answer pairs per subtask (0: no cap; "
             "template questions of tasks 4-6 are never capped).")] = 10,
    include_unrated: Annotated[bool, typer.Option(
        "--include-unrated", help="Also keep unrated pairs imported as curated (3D-RAD, M3D-VQA); "
                                  "rated pairs must still pass.")] = False,
    split: Annotated[str, typer.Option(
        help="keep: the cohort's own split where a scan has one (CT-RATE/3D-RAD names), by patient "
             "otherwise; patient: split every pair by patient.")] = "keep",
    val_frac: Annotated[float, typer.Option(help="Share of pairs (whole patients) in 'valid' when splitting "
                                                 "by patient.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the patient split.")] = 0,
    image_root: Annotated[Path | None, typer.Option(
        help="Write image paths relative to this folder (default: the folder holding every scan; "
             "the manifest records it).")] = None,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Export the curated pairs (3D-RAD filter), keeping every patient on one side of the split."""
    from annotation.curation import FilterRule

    store = _open(db)
    rule = _run(lambda: FilterRule(min_mean, min_dim, require_consistent, cap_per_question or None,
                                   include_unrated))
    with progress_bar(f"export {fmt}") as update:
        manifest = _run(lambda: store.export(fmt, out, rule, val_frac=val_frac, seed=seed, progress=update,
                                             split=split, image_root=image_root))
    for warning in manifest["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    splits = ", ".join(f"{k} {v['rows']}" for k, v in manifest["splits"].items())
    unrated = f"; {manifest['unrated_included']} of them unrated" if manifest["unrated_included"] else ""
    _print(manifest, as_json, f"exported {manifest['total']} pairs to {out} ({splits}{unrated})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ctvqa` app."""
    app.add_typer(db_app, name="db")
    app.add_typer(import_app, name="import")
    app.add_typer(ratings_app, name="ratings")
    app.add_typer(batches_app, name="batches")
    app.command("assign")(assign_cmd)
    app.command("progress")(progress_cmd)
    app.command("agreement")(agreement_cmd)
    app.command("export")(export_cmd)
