"""`ctvqa` commands of this area (placeholder until the area lands)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from napari_ctvqa.cli._runtime import DeviceOption, DtypeOption, QuantizeOption, load_model_or_fail, runtime_or_fail


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ctvqa` app."""
    _register_ask(app)
    _register_evaluate(app)


# ----- ctvqa ask ----------------------------------------------------------------------------
def split_choices(values: list[str] | None) -> list[str] | None:
    """`--choices Yes --choices No` or one `--choices "Yes|No"`: up to four choice texts."""
    if not values:
        return None
    choices = [part.strip() for value in values for part in value.split("|") if part.strip()]
    if not 2 <= len(choices) <= 4:
        raise ValueError(f"give 2 to 4 choices, got {len(choices)}: {choices}")
    return choices


def parse_priors(value: str | None) -> list[int] | None:
    """`--priors 0,1,1` (earlier scans, oldest first) to a list of 0/1."""
    from model.inference.prompts import parse_prior_list

    return parse_prior_list(value) if value else None


def _register_ask(app: typer.Typer) -> None:
    """Add `ctvqa ask`: one question about one CT, answer streamed to stdout."""

    @app.command("ask")
    def ask(
        volume: Path = typer.Argument(..., help="CT file or DICOM folder (NIfTI, DICOM, NRRD, MHA, M3D .npy)."),
        question: str = typer.Argument(..., help="The question, in quotes."),
        choices: list[str] | None = typer.Option(
            None, "--choices",
            help='Closed question: repeat it (--choices Yes --choices No) or give one "Yes|No" (2-4 choices, A-D).',
        ),
        priors: str | None = typer.Option(
            None, "--priors", help="Task 6: labels of the earlier scans, oldest first, e.g. 0,1,1.",
        ),
        prior_label: str | None = typer.Option(
            None, "--prior-label", help="The finding the priors are about (e.g. consolidation); used with --priors.",
        ),
        model: Path | None = typer.Option(
            None, "--model", envvar="CTVQA_MODEL",
            help="Model folder (ours or a published M3D-LaMed/M3D-RAD one); default: env CTVQA_MODEL, else the embedded model.",
        ),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
        window: str | None = typer.Option(None, "--window", help="CT window before normalising: lung, mediastinum, bone, full."),
        as_json: bool = typer.Option(False, "--json", help='Also print {"text", "choice", "choice_scores", "box"} as the last line.'),
        device: DeviceOption = None,
        dtype: DtypeOption = None,
        quantize: QuantizeOption = None,
    ) -> None:
        """Ask the model one question about one CT; the answer streams to stdout as it is generated.

        Closed questions (--choices) also get a likelihood score per choice and the chosen letter.
        A box the model draws is printed in voxel coordinates (z1, y1, x1, z2, y2, x2) of VOLUME.
        """
        from napari_ctvqa.cli._common import fail

        try:
            choice_list = split_choices(choices)
            prior_list = parse_priors(priors)
        except ValueError as exc:
            fail(str(exc))
        runtime_or_fail(device, dtype, quantize)  # an absent GPU fails before reading the CT
        from model import CTReadError, read_ct

        if not volume.exists():
            fail(f"volume {volume} does not exist")
        try:
            ct = read_ct(volume)
        except CTReadError as exc:
            fail(str(exc))
        vlm = load_model_or_fail(model, device, dtype, quantize)
        try:
            prepared = vlm.prepare(ct, window=window)
            result = vlm.answer(
                prepared, question, choices=choice_list, priors=prior_list, prior_label=prior_label,
                max_new_tokens=max_new_tokens, on_text=lambda piece: typer.echo(piece, nl=False),
            )
        except ValueError as exc:
            fail(str(exc))
        typer.echo("")
        if result.choice is not None and not as_json:
            scores = ", ".join(f"{k} {v:.2f}" for k, v in (result.choice_scores or {}).items())
            typer.echo(f"choice: {result.choice} ({scores})")
        if result.box is not None and not as_json:
            typer.echo("box (voxels z1, y1, x1, z2, y2, x2): " + ", ".join(f"{v:.1f}" for v in result.box))
        if as_json:
            typer.echo(json.dumps({
                "text": result.text, "choice": result.choice, "choice_scores": result.choice_scores,
                "box": list(result.box) if result.box is not None else None,
            }))


# ----- ctvqa evaluate (H4b) -----------------------------------------------------------------


def _register_evaluate(app: typer.Typer) -> None:
    """Add `ctvqa evaluate`: per-task metrics of a model on a 3D-RAD-layout QA folder."""

    @app.command("evaluate")
    def evaluate(
        qa: Path = typer.Option(..., "--qa", help="3D-RAD-layout QA folder: Task*/ folders of CSVs."),
        volumes: Path = typer.Option(..., "--volumes", help="Folder with the CTs named by VolumeName (nested folders are searched)."),
        model: Path | None = typer.Option(None, "--model", envvar="CTVQA_MODEL", help="Model folder; default: the embedded model."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="First N questions per task, spread over its subtasks."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the figures as JSON to this file."),
        tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated task keys, e.g. existence_detection,image_observation."),
        robustness: bool = typer.Option(False, "--robustness", help="Also ask with the wrong volume and with noise (3x the time)."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Generation length per answer."),
        device: DeviceOption = None,
        dtype: DtypeOption = None,
        quantize: QuantizeOption = None,
    ) -> None:
        """Score a model on 3D-RAD-style questions: BLEU-1, ROUGE-1, METEOR, BERTScore-F1 (open), accuracy (closed).

        All figures are percent. Questions whose volume is missing are skipped and reported.
        """
        from model.data.qa_folders import QAFolderError, read_qa_folder
        from model.evaluation.evaluate import evaluate_vlm

        from napari_ctvqa.cli._common import fail, progress_bar

        task_list = tasks.split(",") if tasks else None
        try:
            selected = read_qa_folder(qa, task_list)  # a bad CSV fails here, before the slow model load
        except QAFolderError as exc:
            fail(str(exc))
        if not volumes.is_dir():
            fail(f"{volumes}: volumes folder not found")
        vlm = load_model_or_fail(model, device, dtype, quantize)
        try:
            with progress_bar("evaluating") as update:
                report = evaluate_vlm(vlm, qa, volumes, limit=limit, tasks=list(selected), robustness=robustness,
                                      progress=update, model_name=str(model or "embedded default"),
                                      max_new_tokens=max_new_tokens)
        except QAFolderError as exc:
            fail(str(exc))
        if report["n"] == 0:
            missing = report["missing_volumes"]
            fail(f"no question could be evaluated: {missing['count']} volume(s) missing under {volumes} "
                 f"(first: {', '.join(missing['first'])})")
        _print_report(report)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2) + "\n")
            typer.echo(f"wrote {json_out}", err=True)


_HEADERS = {"bleu1": "BLEU-1", "rouge1": "ROUGE-1", "meteor": "METEOR", "bertscore_f1": "BERTScore F1",
            "accuracy": "accuracy", "accuracy_reference": "accuracy (text)",
            "normal": "image", "wrong_volume": "wrong", "noise_volume": "noise", "image_effect": "drop"}


def _task_table(title: str, rows: list[tuple[str, dict]], metrics: list[str], caption: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("task", no_wrap=True)
    table.add_column("n", justify="right")
    for name in metrics:
        table.add_column(_HEADERS.get(name, name), justify="right")
    for task, figures in rows:
        table.add_row(task, str(figures["n"]), *(f"{figures[m]:.1f}" if m in figures else "" for m in metrics))
    return table


def _print_report(report: dict) -> None:
    """Per-task tables (open and closed questions apart, robustness apart) and what was skipped."""
    from rich.console import Console

    from model.evaluation.evaluate import ROBUSTNESS_RUNS
    from model.evaluation.metrics import CLOSED_METRICS, OPEN_METRICS

    console = Console()
    console.print(f"{report['model']}: {report['n']} questions, figures in percent")
    tasks = list(report["tasks"].items())
    for title, metrics in (("open questions", OPEN_METRICS), ("closed questions", CLOSED_METRICS)):
        rows = [(task, figures) for task, figures in tasks if metrics[0] in figures]
        if rows:
            console.print(_task_table(title, rows, list(metrics)))
    if report["robustness"]:
        columns = ["normal", *ROBUSTNESS_RUNS, "image_effect"]
        rows = []
        for task, figures in tasks:
            primary = "accuracy" if "accuracy" in figures else "rouge1"
            keys = {"normal": primary, "image_effect": "image_effect",
                    **{run: f"{primary}_{run}" for run in ROBUSTNESS_RUNS}}
            rows.append((task, {"n": figures["n"], **{c: figures[k] for c, k in keys.items() if k in figures}}))
        console.print(_task_table(
            "robustness: right image / another scan / noise", rows, columns,
            caption="accuracy (ROUGE-1 for open tasks); drop: points lost, near 0 = image ignored"))
    for kind in ("missing_volumes", "unreadable_volumes"):
        shown = report[kind]
        if shown["count"]:
            names = [v["name"] if isinstance(v, dict) else v for v in shown["first"]]
            console.print(f"{shown['count']} {kind.replace('_', ' ')} skipped (first: {', '.join(names)})")
    if "bertscore_encoder" in report:
        console.print(f"BERTScore encoder: {report['bertscore_encoder']}")
