"""`ctvqa ask` and `ctvqa evaluate`: asking a model one question, and scoring it on a QA folder."""
from __future__ import annotations

import json
from pathlib import Path

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
        # OmniCT family: one axial slice instead of the whole scan, and organ masks from a label file
        slice_index: int | None = typer.Option(
            None, "--slice", help="Ask about this axial slice (0 = the most inferior) instead of the whole scan (OmniCT-family models).",
        ),
        rois: Path | None = typer.Option(
            None, "--rois", help="Organ label file on the CT's grid (e.g. TotalSegmentator's); organs it lacks are found from HU.",
        ),
        roi_names: str = typer.Option(
            "totalsegmentator", "--roi-names",
            help='What the --rois labels mean: a preset (totalsegmentator, synth) or "lung_left=10,11;lung_right=12,13,14".',
        ),
        metadata: Path | None = typer.Option(None, "--metadata", help="CT-RATE metadata.csv whose row for VOLUME applies where the file lacks slope/intercept/spacing."),
        allow_non_ct: bool = typer.Option(False, "--allow-non-ct", help="Answer about an MR/PET/... series too (the model knows CT only)."),
        device: DeviceOption = None,
        dtype: DtypeOption = None,
        quantize: QuantizeOption = None,
    ) -> None:
        """Ask the model one question about one CT; the answer streams to stdout as it is generated.

        Closed questions (--choices) also get a likelihood score per choice and the chosen letter.
        A box the model draws is printed in voxel coordinates (z1, y1, x1, z2, y2, x2) of VOLUME.
        """
        from napari_ctvqa.cli._common import fail, finite_json, metadata_table_or_fail

        try:
            choice_list = split_choices(choices)
            prior_list = parse_priors(priors)
        except ValueError as exc:
            fail(str(exc))
        runtime_or_fail(device, dtype, quantize)  # an absent GPU fails before reading the CT
        from model import CTReadError, read_ct
        from model.ct.metadata import row_for

        if not volume.exists():
            fail(f"volume {volume} does not exist")
        table = metadata_table_or_fail(metadata)
        try:
            ct = read_ct(volume, metadata=row_for(table, volume))
        except CTReadError as exc:
            fail(str(exc))
        for note in ct.meta.get("notes", []):
            typer.echo(f"note: {note}", err=True)
        vlm = load_model_or_fail(model, device, dtype, quantize)
        organ_masks = None
        if rois is not None:
            from model.ct.rois import read_roi_labels

            try:
                organ_masks = read_roi_labels(rois, roi_names, like=ct)
            except (CTReadError, ValueError) as exc:
                fail(f"--rois {rois}: {exc}" if str(rois) not in str(exc) else str(exc))
        try:
            prepared = vlm.prepare(ct, window=window, slice_index=slice_index, rois=organ_masks,
                                   allow_non_ct=allow_non_ct)
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
            typer.echo(json.dumps(finite_json({
                "text": result.text, "choice": result.choice, "choice_scores": result.choice_scores,
                "box": list(result.box) if result.box is not None else None,
            }), allow_nan=False))


# ----- ctvqa evaluate --------------------------------------------------------------------------


def answers_folder(answers: Path | None, json_out: Path | None) -> Path | None:
    """Where the answers go: --answers, else beside --json OUT (OUT's name + .answers), else nowhere kept."""
    if answers is not None:
        return answers
    return json_out.with_name(json_out.stem + ".answers") if json_out is not None else None


def relaunch(processes: int, args: list[str]) -> int:
    """Run `ctvqa evaluate ARGS` in `processes` processes under torchrun (gloo on the CPU), the
    cores shared out between them; returns the exit status."""
    import os
    import subprocess
    import sys

    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "napari_ctvqa.cli", "evaluate", *args]
    return subprocess.run(command, env=env).returncode


def _register_evaluate(app: typer.Typer) -> None:
    """Add `ctvqa evaluate`: per-task metrics of a model on a 3D-RAD-layout QA folder."""

    @app.command("evaluate")
    def evaluate(
        qa: Path = typer.Option(..., "--qa", help="3D-RAD-layout QA folder: Task*/ folders of CSVs (and boxes.csv)."),
        volumes: Path = typer.Option(..., "--volumes", help="Folder with the CTs named by VolumeName (nested folders are searched)."),
        model: Path | None = typer.Option(None, "--model", envvar="CTVQA_MODEL", help="Model folder; default: the embedded model."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="First N questions per task, spread over its subtasks."),
        json_out: Path | None = typer.Option(None, "--json", help="Write the figures as JSON to this file."),
        tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated task keys, e.g. existence_detection,image_observation."),
        robustness: bool = typer.Option(False, "--robustness", help="Also ask with another patient's scan and with noise (3x the time)."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Generation length per answer."),
        metadata: Path | None = typer.Option(None, "--metadata", help="CT-RATE metadata.csv: slope/intercept/spacing/orientation per volume, applied where a file lacks them."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Questions about one volume answered together; 1 = one at a time."),
        answers: Path | None = typer.Option(None, "--answers", help="Folder the answers are written to as they come (default: beside --json, OUT.answers)."),
        resume: bool = typer.Option(False, "--resume", help="Keep the answers already in the answers folder and ask only the rest."),
        labels: Path | None = typer.Option(None, "--labels", help="CT-RATE labels.csv naming the findings (default: the cohort's, found above --qa)."),
        boxes: Path | None = typer.Option(None, "--boxes", help="Box-question CSV (default: boxes.csv in --qa, if there)."),
        processes: int = typer.Option(1, "--processes", min=1, help="Share the volumes over N processes (torchrun; or run this command under torchrun/accelerate launch)."),
        seed: int = typer.Option(0, "--seed", help="Volume order, wrong-scan pairing and the noise input."),
        device: DeviceOption = None,
        dtype: DtypeOption = None,
        quantize: QuantizeOption = None,
    ) -> None:
        """Score a model on 3D-RAD-style questions: BLEU-1, ROUGE-1, METEOR, BERTScore-F1 (open); accuracy
        beside the majority-answer baseline (closed); per-finding balanced accuracy (existence); box IoU.

        All figures are percent. Questions whose volume is missing are skipped and reported. Answers are
        written as they come, so an interrupted run continues with --resume.
        """
        from napari_ctvqa.cli._common import fail

        runtime_or_fail(device, dtype, quantize)  # an absent GPU fails before anything slow
        folder = answers_folder(answers, json_out)
        if folder is None and (resume or processes > 1):
            fail("--resume and --processes need an answers folder: give --answers DIR or --json OUT")
        if processes > 1:
            args = ["--qa", str(qa), "--volumes", str(volumes), "--max-new-tokens", str(max_new_tokens),
                    "--batch-size", str(batch_size), "--answers", str(folder), "--seed", str(seed)]
            for flag, value in (("--model", model), ("--limit", limit), ("--json", json_out), ("--tasks", tasks),
                                ("--labels", labels), ("--boxes", boxes), ("--metadata", metadata),
                                ("--device", device), ("--dtype", dtype), ("--quantize", quantize)):
                if value is not None:
                    args += [flag, str(value)]
            args += ["--robustness"] * robustness + ["--resume"] * resume
            raise typer.Exit(relaunch(processes, args))
        _run_evaluate(qa, volumes, model, limit, json_out, tasks, robustness, max_new_tokens, batch_size, folder,
                      resume, labels, boxes, seed, metadata, (device, dtype, quantize))


def _run_evaluate(qa: Path, volumes: Path, model: Path | None, limit: int | None, json_out: Path | None,
                  tasks: str | None, robustness: bool, max_new_tokens: int, batch_size: int, folder: Path | None,
                  resume: bool, labels: Path | None, boxes: Path | None, seed: int, metadata: Path | None,
                  runtime: tuple[str | None, str | None, str | None]) -> None:
    """One process of `ctvqa evaluate` (the first of a sharded run prints and writes the figures)."""
    from model.data.qa_folders import QAFolderError, read_qa_folder
    from model.evaluation.answers import AnswersFolderError
    from model.evaluation.evaluate import evaluate_vlm
    from model.evaluation.findings import LabelsFileError
    from model.evaluation.sharding import Group

    from napari_ctvqa.cli._common import fail, metadata_table_or_fail, progress_bar
    from napari_ctvqa.cli.evaluate_tables import print_report

    task_list = tasks.split(",") if tasks else None
    try:
        selected = read_qa_folder(qa, task_list)  # a bad CSV fails here, before the slow model load
    except QAFolderError as exc:
        fail(str(exc))
    if not volumes.is_dir():
        fail(f"{volumes}: volumes folder not found")
    table = metadata_table_or_fail(metadata)
    vlm = load_model_or_fail(model, *runtime)
    group = Group()
    shard = group.shard
    title = "evaluating" if shard.world == 1 else f"evaluating (process {shard.rank + 1} of {shard.world})"
    try:
        with progress_bar(title, show=shard.main) as update:
            report = evaluate_vlm(vlm, qa, volumes, limit=limit, tasks=list(selected) if task_list else None,
                                  robustness=robustness, progress=update, model_name=str(model or "embedded default"),
                                  max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                                  answers_dir=folder, resume=resume, labels=labels, boxes=boxes, group=group,
                                  metadata=table)
    except (QAFolderError, AnswersFolderError, LabelsFileError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        hint = f"; continue with the same command and --resume (answers in {folder})" if folder else ""
        fail(f"interrupted{hint}", code=130)
    if report is None:  # another process of a sharded run writes the figures
        return
    if report["n"] == 0:
        missing = report["missing_volumes"]
        fail(f"no question could be evaluated: {missing['count']} volume(s) missing under {volumes} "
             f"(first: {', '.join(missing['first'])})")
    print_report(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"wrote {json_out}", err=True)
