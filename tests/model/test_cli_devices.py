"""`--device/--dtype/--quantize` on the commands: they reach the model, and an absent or malformed
device is one error line with a non-zero exit, before any slow work."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from napari_ctvqa.cli import app
from tests.model.test_cli_ask import ct_file  # noqa: F401 - fixture

runner = CliRunner()


def test_ask_runs_in_bf16_with_int8_weights(ct_file, tiny_vlm_dir):  # noqa: F811
    result = runner.invoke(app, ["ask", str(ct_file), "Is there a lung nodule?", "--choices", "Yes|No",
                                 "--model", str(tiny_vlm_dir), "--max-new-tokens", "3", "--json",
                                 "--device", "cpu", "--dtype", "bfloat16", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["choice"] in ("A", "B")


@pytest.mark.parametrize("env,named", [({"CTVQA_DTYPE": "fp8"}, "dtype 'fp8'"),
                                       ({"CTVQA_QUANTIZE": "int2"}, "quantize 'int2'")])
def test_environment_values_are_checked_too(ct_file, tiny_vlm_dir, env, named):  # noqa: F811
    result = runner.invoke(app, ["ask", str(ct_file), "q", "--model", str(tiny_vlm_dir)], env=env)
    assert result.exit_code == 1 and named in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
@pytest.mark.parametrize("command", [
    ["ask", "{ct}", "Is there a nodule?", "--device", "cuda"],
    ["evaluate", "--qa", "{tmp}", "--volumes", "{tmp}", "--device", "cuda:1"],
    ["finetune", "--out", "{tmp}/run", "--device", "cuda"],
    ["demo", "--workdir", "{tmp}/demo", "--device", "cuda", "--screenshot", "{tmp}/s.png"],
])
def test_an_absent_gpu_fails_every_command_in_one_line(command, ct_file, tmp_path):  # noqa: F811
    if command[0] == "evaluate":  # evaluate reads its QA folder first: give it a valid one
        (tmp_path / "Task4_Existence_Detection").mkdir()
        (tmp_path / "Task4_Existence_Detection" / "q.csv").write_text(
            "VolumeName,Question,Answer,AnswerChoice,Choice A,Choice B,Choice C,Choice D,QuestionType,Task,Subtask\n"
            "a.nii.gz,Is there a nodule?,Yes,A,Yes,No,-,-,Close,4,0\n")
    args = [a.format(ct=ct_file, tmp=tmp_path) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is not available" in lines[0] and "--device cpu" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "demo").exists() and not (tmp_path / "run").exists()  # nothing half-built
