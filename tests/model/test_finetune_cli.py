"""`ctvqa finetune` end to end: clear one-line errors, and a two-process (torchrun, gloo) run from a
real SQLite store that registers its version, then a resume of the finished run that changes nothing."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from napari_ctvqa.cli import app
from tests.model.test_finetune_store import rated_store

runner = CliRunner()


def test_cli_refuses_two_sources_and_a_missing_run(tmp_path):
    result = runner.invoke(app, ["finetune", "--out", str(tmp_path / "r"), "--from-db", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "choose one source" in result.output
    result = runner.invoke(app, ["finetune", "--out", str(tmp_path / "r"), "--resume"])
    assert result.exit_code == 1 and "nothing to resume" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_trains_with_two_processes_and_registers(tiny_vlm_dir, tmp_path):
    store, _ = rated_store(tmp_path)
    args = ["finetune", "--out", str(tmp_path / "run"), "--base", str(tiny_vlm_dir), "--db", store.url,
            "--cap-per-question", "0", "--val-frac", "0.3", "--lr", "5e-3", "--batch-size", "2",
            "--max-steps", "6", "--processes", "2", "--eval-limit", "2", "--name", "two-procs", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert (summary["status"], summary["steps"], summary["version"]) == ("done", 6, "two-procs")
    version = store.model_version("two-procs")
    assert version.provenance["hyperparameters"]["batch_size"] == 2
    assert version.metrics["training"]["world_size"] == 2

    again = runner.invoke(app, ["finetune", "--out", str(tmp_path / "run"), "--resume", "--processes", "2", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):])["steps"] == 6
