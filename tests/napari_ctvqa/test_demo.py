"""`ctvqa demo` (issue 10): first-run preparation, the demo window, and the whole command end to end.

The quick tests build a two-patient cohort of small volumes; the end-to-end test runs the real
command twice in a subprocess (first run builds, second reuses) and is marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from annotation.qa_templates import TASKS
from annotation.store import Store
from typer.testing import CliRunner

from napari_ctvqa.cli import app
from napari_ctvqa.demo_setup import DEMO_ANNOTATOR, MARKER, existing_setup, prepare_demo

SMALL = {"patients": 2, "size": (32, 64, 64)}
REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "model" / "default" / "config.json"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("demo")
    stages: list[tuple[str, int, int]] = []
    setup = prepare_demo(workdir, progress=lambda *step: stages.append(step), **SMALL)
    return setup, stages


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_demo_builds_cohort_database_queue_and_model(small_demo):
    setup, stages = small_demo
    assert [s[0] for s in stages][-1] == "ready" and stages[-1][1] == stages[-1][2]
    assert all(done <= total for _, done, total in stages)
    with Store(setup.db_url) as store:
        scans = store.scans()
        assert len(scans) >= 4 and all(scan.path and Path(scan.path).is_file() for scan in scans)
        assert set(store.count_qa_pairs()) == set(TASKS)  # all six tasks imported
        queue = store.queue(DEMO_ANNOTATOR)
        assert len(queue) > 0 and all(item.status == "todo" for item in queue)
        assert store.model_version("default").kind == "default"
        scan = store.scan_by_volume(setup.volume_name)
        assert store.labels(scan.id)[setup.finding] == 1  # the pre-filled question's answer is Yes
        assert store.qa_pair(queue[0].qa_id).volume_name == setup.volume_name  # first pair = scan shown
        shape = scan.shape or (SMALL["size"][0],)
    assert setup.finding.lower() in setup.question and setup.question.endswith("?")
    assert 0 <= setup.slice_index < shape[0]
    assert setup.window in ("lung", "mediastinum")


def test_second_prepare_reuses_everything(small_demo):
    setup, _ = small_demo
    before = _mtimes(setup.cohort)
    called: list = []
    assert prepare_demo(setup.workdir, progress=lambda *step: called.append(step), **SMALL) == setup
    assert called == [] and _mtimes(setup.cohort) == before


def test_marker_of_another_version_is_repaired_without_regenerating(small_demo):
    setup, _ = small_demo
    before = _mtimes(setup.cohort)
    (Path(setup.workdir) / MARKER).write_text(json.dumps({"workdir": setup.workdir}))
    assert existing_setup(setup.workdir) is None
    with Store(setup.db_url) as store:
        counts = store.count_qa_pairs()
        queue = store.queue(DEMO_ANNOTATOR)
    repaired = prepare_demo(setup.workdir, **SMALL)
    assert repaired.volume_name == setup.volume_name and existing_setup(setup.workdir) == repaired
    assert _mtimes(setup.cohort) == before  # the cohort was reused, not regenerated
    with Store(setup.db_url) as store:  # the import and the queue are idempotent
        assert store.count_qa_pairs() == counts and store.queue(DEMO_ANNOTATOR) == queue


def test_cli_refuses_a_missing_model_folder(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "w"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and not (tmp_path / "w").exists()


def test_demo_window_shows_scan_question_and_first_pair(small_demo, make_napari_viewer, tmp_path, monkeypatch):
    """In-process: the layout, the pre-filled question, the first pair, and a clear failure when
    the model cannot load (an empty folder), all without waiting for a real model."""
    from napari_ctvqa.demo import DemoError, open_demo, save_screenshot, wait_for, wait_for_model
    from napari_ctvqa.widgets.rating import LAYER_NAME

    monkeypatch.setenv("CTVQA_CHAT_WORKER", "thread")
    setup, _ = small_demo
    empty = tmp_path / "empty-model"
    empty.mkdir()
    viewer = make_napari_viewer()
    demo = open_demo(setup, str(empty), viewer=viewer)
    try:
        assert demo.chat.ct_layer is demo.ct_layer and demo.ct_layer.data.shape[0] == SMALL["size"][0]
        assert demo.chat.question_edit.toPlainText() == setup.question
        assert demo.chat.choices_label.text().startswith("Choices: A. Yes")
        assert viewer.dims.current_step[0] == setup.slice_index
        assert demo.rating.index == 0 and demo.rating.qa.volume_name == setup.volume_name
        assert not viewer.layers[LAYER_NAME].visible and demo.ct_layer.visible
        # the reading room is docked and lists the demo scan only: the rating panel's layer is no scan
        assert demo.room.scans.scans() == [demo.ct_layer] and demo.room.scans.widget.count() == 1
        assert demo.room.scans.current is demo.ct_layer and not demo.room.views_check.isChecked()
        assert viewer.window.dock_widgets["Reading room"] is demo.room
        with pytest.raises(DemoError, match="could not be loaded"):
            wait_for_model(demo, timeout_s=60)
        with pytest.raises(DemoError, match="timed out after 0 s waiting for the answer"):
            wait_for(lambda: False, 0.2, "the answer")
        shot = save_screenshot(demo, tmp_path / "shot.png")
        assert shot.stat().st_size > 10_000
    finally:
        demo.close(close_viewer=False)
        from qtpy.QtCore import QCoreApplication, QEvent

        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # the closed views' QtViewers


def _run_demo(workdir: Path, shot: Path, env: dict[str, str]) -> dict:
    command = [str(Path(sys.executable).with_name("ctvqa")), "demo", "--workdir", str(workdir),
               "--screenshot", str(shot), "--json", "--timeout", "240"]
    if not env.get("DISPLAY") and shutil.which("xvfb-run"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=workdir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ctvqa_demo_end_to_end_twice(tmp_path, request):
    env = dict(os.environ)
    env.pop("CTVQA_MODEL", None)
    if not DEFAULT_MODEL.is_file():  # until the embedded model is built, a tiny random one stands in
        env["CTVQA_MODEL"] = str(request.getfixturevalue("tiny_vlm_dir"))
    workdir, shot = tmp_path / "demo", tmp_path / "out.png"
    first = _run_demo(workdir, shot, env)
    assert first["built"] is True and first["answer"].strip() and first["choice"] in ("A", "B")

    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1080, 1920) and pixels.std() > 20  # the whole window, not a blank frame
    db_url = f"sqlite:///{workdir / 'ctvqa.sqlite'}"
    with Store(db_url) as store:
        assert len(store.scans()) >= 8 and set(store.count_qa_pairs()) == set(TASKS)
        assert len(store.queue(DEMO_ANNOTATOR)) > 0
        assert len(store.chat_turns()) == 1  # the demo's answer was stored with its scan

    before = _mtimes(workdir / "cohort")
    shot.unlink()
    second = _run_demo(workdir, shot, env)
    assert second["built"] is False and shot.is_file()
    assert _mtimes(workdir / "cohort") == before
    with Store(db_url) as store:
        assert len(store.chat_turns()) == 2


def test_showable_finding_prefers_conspicuous_findings():
    from napari_ctvqa.demo_setup import showable_finding

    assert showable_finding({"Lung nodule": 1, "Pleural effusion": 1}) == ("Pleural effusion", "mediastinum")
    assert showable_finding({"Bronchiectasis": 1, "Emphysema": 0}) == ("Bronchiectasis", "mediastinum")
    assert showable_finding({"Emphysema": 0}) is None
