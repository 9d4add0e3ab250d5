"""`ctvqa evaluate` at scale on a real synthetic cohort and the shipped default model: batched,
sharded and resumed runs give exactly the figures of one question at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT = 6  # questions per task: every task and both closed answer sides, in seconds


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from annotation.synth import write_cohort

    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=2, seed=5, size=(32, 64, 64), valid_frac=0.0, workers=1)
    return out


@pytest.fixture(scope="module")
def vlm():
    from model import load_vlm

    return load_vlm(None)


def _evaluate(vlm, cohort: Path, **options):
    from model.evaluation.evaluate import evaluate_vlm

    options = {"limit": LIMIT, "max_new_tokens": 12, "model_name": "default", **options}
    return evaluate_vlm(vlm, cohort / "qa" / "train", cohort / "volumes", **options)


def _figures(report: dict) -> dict:
    """Everything but how long it took and how it was run."""
    return {k: v for k, v in report.items() if k != "seconds"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one thread, as the torchrun test's processes: sums split over threads end
    in other last digits (the box head's coordinates, BERTScore's embeddings), and on some CPUs
    that moved a figure by 1e-6 between a 2-thread and a 1-thread run of the same answers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_at_a_time(vlm, cohort) -> dict:
    return _evaluate(vlm, cohort, batch_size=1, robustness=True)


def test_batched_run_gives_exactly_the_one_at_a_time_figures(vlm, cohort, one_at_a_time):
    batched = _evaluate(vlm, cohort, batch_size=16, robustness=True)
    assert _figures(batched) == _figures(one_at_a_time)
    assert batched["seconds"]["batch_size"] == 16 and one_at_a_time["seconds"]["batch_size"] == 1
    # the comparison covers every task, the honest measures and the box questions
    assert len(one_at_a_time["tasks"]) == 6 and one_at_a_time["boxes"]["n"] >= 2
    existence = one_at_a_time["tasks"]["existence_detection"]
    assert {"majority_baseline", "balanced_accuracy", "findings", "image_reliance"} <= set(existence)


def test_every_existence_question_batched_gives_the_same_balanced_accuracy(vlm, cohort):
    """All existence questions (a finding present on some scans, absent on others), no limit."""
    options = {"tasks": ["existence_detection"], "limit": None}
    single = _evaluate(vlm, cohort, batch_size=1, **options)
    batched = _evaluate(vlm, cohort, batch_size=32, **options)
    assert _figures(batched) == _figures(single)
    existence = single["tasks"]["existence_detection"]
    both_sides = [f for f, row in existence["findings"].items() if row["present"] and row["absent"]]
    assert both_sides and existence["balanced_accuracy"] is not None
    assert existence["n"] == 18 * single["volumes"]  # every finding asked about every scan
    assert "boxes" not in single  # box questions are asked only with every task (or --boxes)


def test_sharded_run_gives_exactly_the_one_process_figures(cohort, one_at_a_time, tmp_path):
    """Two shards in two threads (each its own model) share an answers folder; the first merges."""
    from model import load_vlm
    from model.evaluation.sharding import Group, Shard

    barrier = threading.Barrier(2, timeout=120)
    results: dict[int, dict | None] = {}
    errors: list[BaseException] = []

    def shard(rank: int) -> None:
        try:
            group = Group(Shard(rank, 2), barrier.wait)
            results[rank] = _evaluate(load_vlm(None), cohort, robustness=True, answers_dir=tmp_path, group=group)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=shard, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results[1] is None and results[0]["seconds"]["processes"] == 2
    assert _figures(results[0]) == _figures(one_at_a_time)
    parts = sorted(p.name for p in tmp_path.glob("part-*.jsonl"))
    assert parts == ["part-0.jsonl", "part-1.jsonl"]
    for part in parts:  # both processes did part of the work
        assert '"done"' in (tmp_path / part).read_text()


def test_resume_redoes_only_the_unfinished_unit(vlm, cohort, tmp_path):
    from model.evaluation.answers import AnswersFolderError

    full = _evaluate(vlm, cohort, answers_dir=tmp_path)
    part = tmp_path / "part-0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    markers = [k for k, line in enumerate(lines) if '"done"' in line]
    # a run killed while writing its last unit: the marker and half a line are missing
    part.write_text("".join(lines[:markers[-1] - 1]) + lines[markers[-1] - 1][:20])
    seen: list[tuple[int, int]] = []
    resumed = _evaluate(vlm, cohort, answers_dir=tmp_path, resume=True, progress=lambda d, t: seen.append((d, t)))
    assert _figures(resumed) == _figures(full)
    last_unit = len(lines[markers[-2] + 1:markers[-1]])
    assert seen[-1] == (last_unit, last_unit)  # only that volume was asked again
    again: list[tuple[int, int]] = []
    _evaluate(vlm, cohort, answers_dir=tmp_path, resume=True, progress=lambda d, t: again.append((d, t)))
    assert again[-1] == (0, 0)
    with pytest.raises(AnswersFolderError, match=r"max_new_tokens 12 -> 5"):
        _evaluate(vlm, cohort, answers_dir=tmp_path, resume=True, max_new_tokens=5)
    csv_path = sorted((cohort / "qa" / "train" / "Task4_Existence_Detection").glob("*.csv"))[0]
    original = csv_path.read_text()
    try:  # an edited QA file: the kept answer's line now holds another question
        csv_path.write_text(original.replace("?", "? (edited)", 1))
        with pytest.raises(AnswersFolderError, match=r"the QA files now ask .*\(edited\)"):
            _evaluate(vlm, cohort, answers_dir=tmp_path, resume=True)
    finally:
        csv_path.write_text(original)


def test_resume_with_a_larger_limit_answers_the_new_questions_of_finished_volumes(vlm, cohort, tmp_path):
    """--resume after --limit (or --tasks) grew: volumes finished before get their new questions
    asked, and the figures are those of a fresh run with the larger limit."""
    _evaluate(vlm, cohort, answers_dir=tmp_path, limit=2)
    seen: list[tuple[int, int]] = []
    resumed = _evaluate(vlm, cohort, answers_dir=tmp_path, resume=True, progress=lambda d, t: seen.append((d, t)))
    everything: list[tuple[int, int]] = []
    fresh = _evaluate(vlm, cohort, progress=lambda d, t: everything.append((d, t)))
    assert _figures(resumed) == _figures(fresh)
    assert 0 < seen[-1][1] < everything[-1][1]  # the new questions only, not all over again


def test_figures_of_the_report_are_the_honest_measures(one_at_a_time):
    tasks = one_at_a_time["tasks"]
    for key in ("existence_detection", "static_temporal_diagnosis", "longitudinal_temporal_diagnosis"):
        figures = tasks[key]
        assert figures["accuracy_over_baseline"] == pytest.approx(figures["accuracy"] - figures["majority_baseline"])
        assert figures["image_reliance"]["wrong_volume"] == pytest.approx(
            figures["accuracy"] - figures["accuracy_wrong_volume"])
    findings = tasks["existence_detection"]["findings"]
    assert one_at_a_time["finding_names"] == "labels.csv"
    assert sum(f["present"] + f["absent"] for f in findings.values()) == tasks["existence_detection"]["n"]
    static = tasks["static_temporal_diagnosis"]
    assert static["majority_baseline"] <= static["presence_ceiling"] <= 100.0
    consistency = tasks["longitudinal_temporal_diagnosis"]["rule_consistency"]
    assert consistency["n"] == tasks["longitudinal_temporal_diagnosis"]["n"]
    assert 2 == one_at_a_time["patients"] <= one_at_a_time["volumes"]


@pytest.mark.slow
def test_ctvqa_evaluate_under_torchrun_merges_two_processes(cohort, tmp_path, one_at_a_time):
    """The real launcher: `--processes 2` relaunches the command under torchrun (gloo)."""
    out = tmp_path / "eval.json"
    args = [sys.executable, "-m", "napari_ctvqa.cli", "evaluate", "--qa", str(cohort / "qa" / "train"),
            "--volumes", str(cohort / "volumes"), "--limit", str(LIMIT), "--max-new-tokens", "12",
            "--robustness", "--processes", "2", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["seconds"]["processes"] == 2
    assert {k: v for k, v in _figures(report).items() if k != "model"} == {
        k: v for k, v in _figures(one_at_a_time).items() if k != "model"}
    assert sorted(p.name for p in (tmp_path / "eval.answers").glob("part-*.jsonl")) == ["part-0.jsonl", "part-1.jsonl"]
    assert proc.stdout.count("closed questions") == 1  # one report, from the first process


def test_model_card_figures_are_ctvqa_evaluate_figures(tmp_path):
    """The training script's held-out evaluation (eval.json and the card) is `ctvqa evaluate
    --robustness` on the same folder: the same code, the same numbers."""
    import shutil
    from dataclasses import replace

    from typer.testing import CliRunner

    from annotation.synth import write_cohort
    from model.inference.loading import DEFAULT_MODEL_DIR
    from model.training.default.recipe import cohort_folder, recipe_from_record
    from model.training.default.run import evaluate_and_describe
    from napari_ctvqa.cli import app

    heldout = (8, (32, 64, 64), 2)
    cohort = cohort_folder(tmp_path, heldout, heldout=True)
    write_cohort(cohort, patients=2, seed=8, size=(32, 64, 64), valid_frac=0.5, workers=1)
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    record = json.loads((folder / "training.json").read_text())
    recipe = replace(recipe_from_record(record["recipe"]), eval_limit=5, heldout=(heldout,))
    card_report = evaluate_and_describe(folder, tmp_path, recipe, record)["sizes"]["32x64x64"]
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(folder), "--qa", str(cohort / "qa" / "valid"),
                                      "--volumes", str(cohort / "volumes"), "--limit", "5", "--robustness",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    cli = json.loads(out.read_text())
    assert cli["tasks"] == card_report["tasks"] == json.loads((folder / "eval.json").read_text())["sizes"]["32x64x64"]["tasks"]
    card = (folder / "README.md").read_text()
    existence = cli["tasks"]["existence_detection"]
    assert f"| existence_detection | {existence['accuracy']:.1f} | {existence['majority_baseline']:.1f}" in card
    assert "another patient's scan" in card and "Every held-out existence question, per finding" in card
    # --card-only writes the same card from the saved figures, without evaluating
    from model.training.default.run import main
    (folder / "README.md").write_text("stale")
    assert main(["--card-only", "--out", str(folder)]) == 0
    assert (folder / "README.md").read_text() == card
    (folder / "eval.json").unlink()
    with pytest.raises(SystemExit, match="eval.json: cannot rewrite the card"):
        main(["--card-only", "--out", str(folder)])
    assert (folder / "README.md").read_text() == card
