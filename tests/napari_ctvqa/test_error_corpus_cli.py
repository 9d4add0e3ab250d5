"""The CLI's side of issue 19: whatever goes wrong, `ctvqa` prints `error: ...` naming the file,
row or key, exits 1 and shows no traceback, unless `--debug` asks for it. Real files, a real
SQLite database, a real model folder and a real CT file."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotation.importers import BadInputError
from annotation.store import Store
from model.ct.io import write_ct
from model.ct.volume import CTVolume, canonical_affine
from napari_ctvqa.cli import app
from napari_ctvqa.cli.errors import user_message
from tests.annotation.conftest import seed

HEADER = ("VolumeName,Question,Annotator,VisualVerifiability,SpecificityClarity,AnswerAppropriateness,"
          "QAAlignment,LinguisticQuality,Consistent\n")


def run(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *words: str) -> None:  # noqa: ANN001
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.fixture
def db(tmp_path: Path) -> str:
    store = Store.create(str(tmp_path / "cli.sqlite"))
    seed(store, n_scans=2, per_task=1)
    store.close()
    return str(tmp_path / "cli.sqlite")


def test_bad_bytes_in_a_ratings_csv(db: str, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(HEADER.encode() + b"test_0_a_1.nii.gz,Gr\xf6\xdfe?,ann,3,3,3,3,3,1\n")
    assert_one_line_error(run("ratings", "import", str(path), "--db", db), str(path), "line 2", "not UTF-8")


def test_every_bad_row_is_listed_under_one_error_line(db: str, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "".join(f"test_0_a_1.nii.gz,q{k}?,ann,3,3,3,9,3,1\n" for k in range(6)))
    result = run("ratings", "import", str(path), "--db", db)
    assert_one_line_error(result, "6 bad rows", *(f"line {k}:" for k in range(2, 8)))
    assert len(result.output.splitlines()) == 7


def test_debug_shows_the_traceback(db: str, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "test_0_a_1.nii.gz,q?,,3,3,3,3,3,1\n")
    result = run("--debug", "ratings", "import", str(path), "--db", db)
    assert result.exit_code == 1 and isinstance(result.exception, BadInputError)
    assert "annotator name" in str(result.exception)


def test_a_broken_model_folder(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_vlm_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    missing = sorted(tensors)[1]
    del tensors[missing]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    spacing = (5.0, 1.0, 1.0)
    volume = write_ct(CTVolume(np.zeros((8, 16, 16), np.float32), spacing, canonical_affine(spacing), {}),
                      tmp_path / "scan.nii.gz")
    assert_one_line_error(run("ask", str(volume), "Is there an effusion?", "--model", str(folder)),
                          str(folder), missing)


def test_a_corrupt_ct(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert_one_line_error(run("ask", str(path), "Anything?"), str(path))


def test_store_errors_reach_the_user_as_one_line(db: str, tmp_path: Path) -> None:
    assert_one_line_error(run("batches", "list", "--db", str(tmp_path / "no" / "such.sqlite")), "does not exist")
    assert_one_line_error(run("batches", "remove", "nope", "--db", db), "no assignment batch named 'nope'")
    assert_one_line_error(run("assign", "--annotators", " , ", "--per-annotator", "2", "--db", db), "annotator")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(run("db", "init", "--db", str(blocker / "x.sqlite")), str(blocker))


def test_unexpected_errors_say_how_to_see_more() -> None:
    try:
        1 / 0  # noqa: B018 - a real exception of a kind no layer raises on purpose
    except ZeroDivisionError as exc:
        message = user_message(exc)
    assert message.startswith("ZeroDivisionError: division by zero") and "--debug" in message
    assert user_message(KeyError("no rater named 'x'")) == "no rater named 'x'"
    assert user_message(FileNotFoundError(2, "No such file or directory", "/x/y.csv")) == "/x/y.csv: No such file or directory"
