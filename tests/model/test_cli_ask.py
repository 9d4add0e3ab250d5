"""`ctvqa ask` on a small synthetic NIfTI with the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from napari_ctvqa.cli import app
from napari_ctvqa.cli.vlm import parse_priors, split_choices

runner = CliRunner()


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vol = np.full((40, 40, 20), -1000, np.int16)  # x, y, z as NIfTI stores it
    vol[5:35, 6:34, 2:18] = 40
    path = tmp_path_factory.mktemp("ask") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def test_ask_streams_and_prints_json(ct_file: Path, tiny_vlm_dir: Path) -> None:
    result = runner.invoke(app, ["ask", str(ct_file), "Is there a lung nodule?", "--choices", "Yes|No",
                                 "--model", str(tiny_vlm_dir), "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"text", "choice", "choice_scores", "box"}
    assert last["choice"] in ("A", "B") and set(last["choice_scores"]) == {"A", "B"}
    assert sum(last["choice_scores"].values()) == pytest.approx(1.0)


def test_ask_open_question_uses_env_model(ct_file: Path, tiny_vlm_dir: Path) -> None:
    result = runner.invoke(app, ["ask", str(ct_file), "What abnormalities are seen?", "--max-new-tokens", "3",
                                 "--priors", "0,1", "--prior-label", "consolidation"],
                           env={"CTVQA_MODEL": str(tiny_vlm_dir)})
    assert result.exit_code == 0, result.output
    assert "choice:" not in result.stdout


def test_ask_clean_errors(ct_file: Path, tiny_vlm_dir: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["ask", str(tmp_path / "none.nii.gz"), "Q?", "--model", str(tiny_vlm_dir)])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    bad_model = runner.invoke(app, ["ask", str(ct_file), "Q?", "--model", str(tmp_path)])
    assert bad_model.exit_code != 0 and "cannot load model" in bad_model.output
    assert "Traceback" not in bad_model.output
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti")
    unreadable = runner.invoke(app, ["ask", str(junk), "Q?", "--model", str(tiny_vlm_dir)])
    assert unreadable.exit_code != 0 and "junk.nii.gz" in unreadable.output


def test_choice_and_prior_parsing() -> None:
    assert split_choices(["Yes|No"]) == ["Yes", "No"]
    assert split_choices(["Yes", "No", "Maybe"]) == ["Yes", "No", "Maybe"]
    assert split_choices(None) is None
    with pytest.raises(ValueError, match="2 to 4"):
        split_choices(["Yes"])
    assert parse_priors("0, 1,1") == [0, 1, 1]
    with pytest.raises(ValueError, match="0/1"):
        parse_priors("0,2")


def test_ask_refuses_an_mr_series_unless_allowed(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    from tests.model.dicom_phantoms import write_phantom_series

    write_phantom_series(tmp_path / "mr", np.arange(6) * 3.0, modality="MR", orientation=[0, 1, 0, 0, 0, -1])
    args = ["ask", str(tmp_path / "mr"), "Is there a lung nodule?", "--model", str(tiny_vlm_dir), "--max-new-tokens", "2"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "MR series, not CT" in refused.output and "Traceback" not in refused.output
    allowed = runner.invoke(app, [*args, "--allow-non-ct"])
    assert allowed.exit_code == 0, allowed.output


def test_ask_json_is_strict_json_even_with_infinite_voxels(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    vol = np.full((40, 40, 20), -1000, np.float32)
    vol[5:35, 6:34, 2:18] = 40
    vol[10, 10, 10], vol[20, 20, 5] = np.inf, -np.inf
    path = tmp_path / "inf.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    result = runner.invoke(app, ["ask", str(path), "Is there a lung nodule?", "--choices", "Yes|No",
                                 "--model", str(tiny_vlm_dir), "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert all(np.isfinite(v) for v in last["choice_scores"].values())
    assert "2 non-finite voxel(s)" in result.stderr
