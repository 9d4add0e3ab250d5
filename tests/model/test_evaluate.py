"""`evaluate_vlm` and `ctvqa evaluate` on a tiny QA folder and a tiny random model."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from model.data.qa_folders import QA_COLUMNS, TASK_KEYS, QAFolderError, read_qa_folder, take_per_task, task_key

DASH = ("-", "-", "-", "-")
TEMPORAL = ("Refractory Lesion (Persistent or recurrent, now present)",
            "Resolved Lesion (Previously present or recurrent, now absent)",
            "New Lesion (Absent previously, now present)", "No Abnormality (Always absent)")


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(QA_COLUMNS)
        writer.writerows(rows)
    return path


def open_row(task: int, subtask: int, volume: str, question: str, answer: str) -> tuple:
    return (task, subtask, volume, question, answer, "Open", "-", *DASH)


def closed_row(task: int, subtask: int, volume: str, question: str, letter: str, choices: tuple) -> tuple:
    answer = choices["ABCD".index(letter)]
    return (task, subtask, volume, question, answer, "Close", letter, *choices)


@pytest.fixture
def qa_dir(tmp_path: Path) -> Path:
    """Two open subtasks (image observation) and two closed ones (existence), over three volumes,
    one of which is missing on disk."""
    root = tmp_path / "qa"
    write_csv(root / "Task1_Image_Observation" / "Anatomical_observation.csv", [
        open_row(1, 1, "test_1_a_1.nii.gz", "Where is the largest lymph node?", "Right hilar region."),
        open_row(1, 1, "test_2_a_1.nii.gz", "What device is on the chest wall?", "Pacemaker."),
        open_row(1, 1, "test_9_a_1.nii.gz", "Is the trachea midline?", "Yes, midline."),
    ])
    write_csv(root / "Task1_Image_Observation" / "Pathological_observation.csv", [
        open_row(1, 2, "test_1_a_1.nii.gz", "What is seen in the left lung?", "A nodule in the upper lobe."),
    ])
    yes_no = ("Yes", "No", "-", "-")
    write_csv(root / "Task4_Existence_Detection" / "Emphysema.csv", [
        closed_row(4, 7, "test_1_a_1.nii.gz", "Does the CT show emphysema?", "B", yes_no),
        closed_row(4, 7, "test_2_a_1.nii.gz", "Is emphysema present?", "A", yes_no),
    ])
    write_csv(root / "Task4_Existence_Detection" / "Lung nodule.csv", [
        closed_row(4, 10, "test_1_a_1.nii.gz", "Is there a lung nodule?", "A", yes_no),
        closed_row(4, 10, "test_9_a_1.nii.gz", "Any lung nodule?", "B", yes_no),
    ])
    write_csv(root / "Task6_Longitudinal_Temporal_Diagnosis" / "b.csv", [
        closed_row(6, 1, "test_2_a_1.nii.gz", "Past sequences of emphysema: [1]. (Note: 0 indicates absence, "
                   "and 1 indicates presence.) What is the current assessment?", "A", TEMPORAL),
    ])
    return root


def test_task_keys_come_from_folder_names_not_numbers():
    assert task_key("Task1_Image_Observation") == "image_observation"
    assert task_key("Task2_Anomaly_Detection") == "anomaly_detection"
    assert task_key("Task6_Longitudinal_Temporal_Diagnosis") == "longitudinal_temporal_diagnosis"
    assert task_key("images") is None
    assert set(TASK_KEYS) == {task_key(f) for f in (
        "Task1_Image_Observation", "Task2_Anomaly_Detection", "Task3_Medical_Computation",
        "Task4_Existence_Detection", "Task5_Static_Temporal_Diagnosis", "Task6_Longitudinal_Temporal_Diagnosis")}


def test_read_qa_folder_reads_subtasks_and_choices(qa_dir):
    questions = read_qa_folder(qa_dir)
    assert list(questions) == ["image_observation", "existence_detection", "longitudinal_temporal_diagnosis"]
    observation = questions["image_observation"]
    assert [q.subtask for q in observation] == ["Anatomical_observation"] * 3 + ["Pathological_observation"]
    assert not observation[0].closed and observation[0].answer == "Right hilar region."
    emphysema = questions["existence_detection"][0]
    assert emphysema.closed and emphysema.answer_choice == "B" and emphysema.choices == ("Yes", "No", "-", "-")
    assert emphysema.source.endswith("Emphysema.csv:2")
    assert list(read_qa_folder(qa_dir, ["existence_detection"])) == ["existence_detection"]


def test_take_per_task_is_stratified_over_subtasks(qa_dir):
    observation = read_qa_folder(qa_dir)["image_observation"]
    two = take_per_task(observation, 2)
    assert [q.subtask for q in two] == ["Anatomical_observation", "Pathological_observation"]
    assert take_per_task(observation, 3) == [observation[0], observation[3], observation[1]]
    assert take_per_task(observation, None) == observation
    assert take_per_task(observation, 99) == observation


def test_bad_csv_is_refused_with_file_and_line(qa_dir):
    bad = write_csv(qa_dir / "Task5_Static_Temporal_Diagnosis" / "c.csv", [
        closed_row(5, 2, "test_2_a_1.nii.gz", "How would you classify it?", "A", TEMPORAL),
        (5, 2, "test_2_a_1.nii.gz", "How would you classify it?", "x", "Close", "E", *TEMPORAL),
    ])
    with pytest.raises(QAFolderError, match=rf"{bad}:3: AnswerChoice is 'E'"):
        read_qa_folder(qa_dir)
    write_csv(bad, [closed_row(4, 1, "test_2_a_1.nii.gz", "Is it there?", "A", ("Yes", "No", "-", "-"))[:6]
                    + ("C", "Yes", "No", "-", "-")])
    with pytest.raises(QAFolderError, match=rf"{bad}:2: AnswerChoice C points at an empty choice"):
        read_qa_folder(qa_dir)
    (qa_dir / "Task5_Static_Temporal_Diagnosis" / "c.csv").write_text("Task,Question\n5,hi\n")
    with pytest.raises(QAFolderError, match=r"c\.csv: missing column\(s\) \['Subtask', 'VolumeName'"):
        read_qa_folder(qa_dir)


def test_binary_csv_is_refused_with_its_name(qa_dir):
    bad = qa_dir / "Task4_Existence_Detection" / "Zeta.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(QAFolderError, match=r"Zeta\.csv: not a readable UTF-8 CSV"):
        read_qa_folder(qa_dir)


def test_unknown_task_and_empty_folder_are_refused(qa_dir, tmp_path):
    with pytest.raises(QAFolderError, match="unknown task"):
        read_qa_folder(qa_dir, ["existence"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(QAFolderError, match="no task folder"):
        read_qa_folder(tmp_path / "empty")


def test_reads_the_real_3drad_test_split(shared_data):
    questions = read_qa_folder(shared_data / "3d-rad" / "test")
    assert sum(len(v) for v in questions.values()) == 33910
    assert set(questions) == set(TASK_KEYS)
    # Folder Task1 holds the paper's task 2 (image observation): keyed by name, open questions.
    assert not questions["image_observation"][0].closed
    assert {q.answer_choice for q in questions["longitudinal_temporal_diagnosis"]} == set("ABCD")
    existence = take_per_task(questions["existence_detection"], 36)
    assert len({q.subtask for q in existence}) == 18


@pytest.fixture
def volumes_dir(tmp_path: Path) -> Path:
    """Two small HU volumes (a bright box in a dark body), one flat and one in a CT-RATE-like subfolder;
    test_9 is missing on purpose and a broken file stands in for a corrupt download."""
    from model.ct.volume import CTVolume, canonical_affine
    from model.ct.io import write_ct

    root = tmp_path / "volumes"
    rng = np.random.default_rng(0)
    for k, path in enumerate([root / "test_1_a_1.nii.gz", root / "test_2" / "test_2_a" / "test_2_a_1.nii.gz"]):
        array = np.full((12, 24, 24), -1000.0, dtype=np.float32)
        array[2:10, 4:20, 4:20] = rng.normal(40, 20, size=(8, 16, 16))
        array[4:7, 6 + 4 * k:12 + 4 * k, 8:14] = 700.0
        spacing = (3.0, 1.5, 1.5)
        write_ct(CTVolume(array, spacing, canonical_affine(spacing)), path)
    return root


def _check_figures(figures: dict, closed: bool) -> None:
    expected = {"accuracy", "accuracy_reference"} if closed else {"bleu1", "rouge1", "meteor", "bertscore_f1"}
    assert expected <= set(figures)
    for key, value in figures.items():
        signed = key in ("image_effect", "accuracy_over_baseline")  # differences of percentages
        if isinstance(value, float) and not signed:
            assert 0.0 <= value <= 100.0, (key, value)


def test_evaluate_vlm_end_to_end_on_a_tiny_model(tiny_vlm_dir, qa_dir, volumes_dir):
    from model import load_vlm
    from model.evaluation.evaluate import evaluate_vlm

    seen: list[tuple[int, int]] = []
    report = evaluate_vlm(load_vlm(tiny_vlm_dir), qa_dir, volumes_dir, progress=lambda d, t: seen.append((d, t)),
                          max_new_tokens=4)
    json.dumps(report)  # the CLI writes it as JSON as is
    assert report["model"] == str(tiny_vlm_dir)
    # 9 questions; the 2 about the missing test_9 are skipped and reported.
    assert report["n"] == 7 and report["skipped_questions"] == 2
    assert report["missing_volumes"] == {"count": 1, "first": ["test_9_a_1.nii.gz"]}
    assert list(report["tasks"]) == ["image_observation", "existence_detection", "longitudinal_temporal_diagnosis"]
    observation, existence = report["tasks"]["image_observation"], report["tasks"]["existence_detection"]
    assert observation["n"] == 3 and existence["n"] == 3 and report["tasks"]["longitudinal_temporal_diagnosis"]["n"] == 1
    _check_figures(observation, closed=False)
    _check_figures(existence, closed=True)
    assert {k: v["n"] for k, v in observation["subtasks"].items()} == {"Anatomical_observation": 2, "Pathological_observation": 1}
    assert {k: v["n"] for k, v in existence["subtasks"].items()} == {"Emphysema": 2, "Lung nodule": 1}
    for sub in existence["subtasks"].values():
        _check_figures(sub, closed=True)
        assert sub["accuracy"] in (0.0, 50.0, 100.0)
    assert "MiniLM" in report["bertscore_encoder"]
    assert seen[0] == (0, 7) and seen[-1] == (7, 7) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_evaluate_vlm_limit_tasks_and_robustness(tiny_vlm_dir, qa_dir, volumes_dir):
    from model import load_vlm
    from model.evaluation.evaluate import evaluate_vlm, vlm_text_encoder

    vlm = load_vlm(tiny_vlm_dir)
    report = evaluate_vlm(vlm, qa_dir, volumes_dir, limit=3, tasks=["existence_detection", "image_observation"],
                          robustness=True, max_new_tokens=3, encoder=vlm_text_encoder(vlm))
    # limit 3 per task, round-robin over subtasks; test_1 and test_2 are both asked about.
    assert list(report["tasks"]) == ["image_observation", "existence_detection"]
    assert {k: v["n"] for k, v in report["tasks"]["existence_detection"]["subtasks"].items()} == {
        "Emphysema": 2, "Lung nodule": 1}
    assert report["robustness"] == ["wrong_volume", "noise_volume"]
    existence = report["tasks"]["existence_detection"]
    for key in ("accuracy_wrong_volume", "accuracy_noise_volume"):
        assert 0.0 <= existence[key] <= 100.0
    assert existence["image_effect"] == pytest.approx(
        existence["accuracy"] - (existence["accuracy_wrong_volume"] + existence["accuracy_noise_volume"]) / 2)
    assert {"rouge1_wrong_volume", "rouge1_noise_volume", "image_effect"} <= set(report["tasks"]["image_observation"])
    assert report["bertscore_encoder"].endswith("language model (last layer)")


def test_vlm_text_encoder_scores_identical_text_100(tiny_vlm_dir):
    from model import load_vlm
    from model.evaluation.evaluate import vlm_text_encoder
    from model.evaluation.metrics import bertscore_f1

    scores = bertscore_f1(["the heart is enlarged"] * 2, ["the heart is enlarged", "pleural effusion"],
                          vlm_text_encoder(load_vlm(tiny_vlm_dir)))
    assert scores[0] == pytest.approx(100.0, abs=0.01) and scores[1] < scores[0]


def test_unreadable_volume_is_reported_not_fatal(tiny_vlm_dir, qa_dir, volumes_dir):
    from model import load_vlm
    from model.evaluation.evaluate import evaluate_vlm

    (volumes_dir / "test_9_a_1.nii.gz").write_bytes(b"not a nifti")
    report = evaluate_vlm(load_vlm(tiny_vlm_dir), qa_dir, volumes_dir, tasks=["existence_detection"], max_new_tokens=2)
    assert report["n"] == 3 and report["missing_volumes"]["count"] == 0
    assert report["unreadable_volumes"]["count"] == 1
    assert report["unreadable_volumes"]["first"][0]["name"] == "test_9_a_1.nii.gz"
    assert "test_9_a_1.nii.gz" in report["unreadable_volumes"]["first"][0]["reason"]


def test_ctvqa_evaluate_writes_the_contract_json(tiny_vlm_dir, qa_dir, volumes_dir, tmp_path):
    from typer.testing import CliRunner

    from napari_ctvqa.cli import app

    out = tmp_path / "figures" / "eval.json"
    result = CliRunner().invoke(app, [
        "evaluate", "--model", str(tiny_vlm_dir), "--qa", str(qa_dir), "--volumes", str(volumes_dir),
        "--tasks", "existence_detection,longitudinal_temporal_diagnosis",
        "--max-new-tokens", "2", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "existence_detection" in result.stdout and "1 missing volumes skipped" in result.stdout
    report = json.loads(out.read_text())
    assert {"model", "n", "tasks"} <= set(report) and report["n"] == 4
    assert set(report["tasks"]) == {"existence_detection", "longitudinal_temporal_diagnosis"}
    _check_figures(report["tasks"]["longitudinal_temporal_diagnosis"], closed=True)


def test_ctvqa_evaluate_fails_cleanly(tiny_vlm_dir, qa_dir, tmp_path):
    from typer.testing import CliRunner

    from napari_ctvqa.cli import app

    empty = tmp_path / "no_volumes"
    empty.mkdir()
    args = ["evaluate", "--model", str(tiny_vlm_dir), "--qa", str(qa_dir), "--volumes", str(empty)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "no question could be evaluated: 3 volume(s) missing" in result.stderr
    result = CliRunner().invoke(app, [*args, "--tasks", "existence"])
    assert result.exit_code == 1 and "unknown task(s) ['existence']" in result.stderr
    assert "Traceback" not in result.output


def test_evaluate_real_3drad_questions_on_a_real_ct(tiny_vlm_dir, shared_data, tmp_path):
    """The published CSVs (long task-6 questions, 4-choice temporal tasks) against the real
    TotalSegmentator CT standing in for every volume the first questions name."""
    from model import load_vlm
    from model.evaluation.evaluate import evaluate_vlm

    qa = shared_data / "3d-rad" / "test"
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    wanted = {q.volume_name for items in read_qa_folder(qa).values() for q in take_per_task(items, 2)}
    for name in wanted:
        (volumes / name).symlink_to(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")
    report = evaluate_vlm(load_vlm(tiny_vlm_dir), qa, volumes, limit=2, max_new_tokens=2)
    assert report["n"] == 12 and report["missing_volumes"]["count"] == 0
    assert list(report["tasks"]) == list(TASK_KEYS)
    for key, figures in report["tasks"].items():
        assert figures["n"] == 2
        _check_figures(figures, closed=key not in ("anomaly_detection", "image_observation", "medical_computation"))
