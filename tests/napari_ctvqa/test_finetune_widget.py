"""Finetune panel: a tiny run from a real store trains in a `ctvqa finetune` child process (the
CLI's own path), shows progress, Cancel stops it with a checkpoint, Resume finishes it with the
right time left, and the new version joins the base model list."""
from __future__ import annotations

from napari_ctvqa.widgets.finetune import FinetuneWidget
from tests.model.test_finetune_store import rated_store


def test_progress_cancel_resume_and_completion(make_napari_viewer, qtbot, tiny_vlm_dir, tmp_path):
    store, _ = rated_store(tmp_path, n_patients=4)
    widget = FinetuneWidget(make_napari_viewer(), store=store)
    qtbot.addWidget(widget)
    assert "8 of 8 QA pairs pass" not in widget.preview_label.text()  # patient 0's open pair fails
    assert "7 of 8 QA pairs pass" in widget.preview_label.text()
    widget.set_base(str(tiny_vlm_dir))
    widget.out_dir.setText(str(tmp_path / "run"))
    widget.val_frac.setValue(0.0)
    widget.cap.setValue(0)
    widget.lr.setValue(5e-3)
    widget.batch_size.setValue(2)
    widget.max_steps.setValue(40)

    steps, resumed = [], []
    widget._relay.progressed.connect(lambda p: steps.append(p.step))
    widget._relay.progressed.connect(lambda p: resumed.append(p) if p.start_step else None)
    widget._relay.progressed.connect(lambda p: widget.cancel_button.click() if p.step == 1 else None)
    with qtbot.waitSignal(widget.finished, timeout=120_000) as first:
        widget.start()
        assert not widget.start_button.isEnabled() and widget.cancel_button.isEnabled()
    cancelled = first.args[0]
    assert cancelled["status"] == "cancelled" and 1 <= cancelled["steps"] < 40
    assert "--progress-json" in widget.command() and "finetune" == widget.command()[0]
    command = widget.command()
    assert command[command.index("--train-modules") + 1] == "lm"  # the default: LoRA on the language model
    widget.train_modules.setCurrentIndex(widget.train_modules.findData("all"))
    command = widget.command()
    assert command[command.index("--train-modules") + 1] == "all" and widget.config().train_modules == "all"
    widget.train_modules.setCurrentIndex(0)
    assert "Resume" in widget.result.text() and widget.resume_button.isEnabled()

    with qtbot.waitSignal(widget.finished, timeout=120_000) as second:
        widget.resume_button.click()
    done = second.args[0]
    assert (done["status"], done["steps"]) == ("done", 40)
    assert resumed and resumed[0].start_step == cancelled["steps"]  # time left counts this session's pace only
    assert resumed[0].eta_s > 0
    assert steps[-1] == 40 and "Done" in widget.status.text()
    assert widget.progress.value() == 40
    assert done["version"] in widget.result.text()
    assert widget.base_box.findData(done["version"]) >= 0  # the new version can be the next base
    run = store.finetune_run(done["run_id"])
    assert run.status == "done" and run.finished_at > run.started_at
    widget.close()
    store.close()
