"""A CT-RATE-like raw volume imported with its metadata row shows the same HU and spacing in the
viewer (`ctvqa view --metadata`), the chat's model process and the rating view as the original;
a tilted DICOM series opens with a note saying it was resampled."""
from __future__ import annotations

import csv
import queue
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotation.importers.ctrate import import_ctrate
from annotation.qa_templates import CT_RATE_LABELS
from annotation.store import Store
from model.ct.io import read_ct
from model.ct.metadata import read_metadata_table, row_for
from napari_ctvqa._reader import layer_data, read_ct_layers
from napari_ctvqa.cli import app
from napari_ctvqa.vlm_server import ChatServer
from napari_ctvqa.widgets.chat.ct_choice import payload_of
from napari_ctvqa.widgets.rating import RatingWidget
from napari_ctvqa.widgets.rating.scan_layer import LAYER_NAME
from tests.model.ctrate_like import NAME, write_ctrate_like
from tests.model.dicom_phantoms import write_phantom_series


@pytest.fixture
def ctrate_like(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_ctrate_like(tmp_path / "ctrate")


def test_view_with_metadata_shows_the_original_hu_and_spacing(ctrate_like, make_napari_viewer, tmp_path: Path) -> None:
    original, raw, table = ctrate_like
    truth = read_ct(original)
    shot = tmp_path / "view.png"
    result = CliRunner().invoke(app, ["view", str(raw), "--metadata", str(table), "--screenshot", str(shot)])
    assert result.exit_code == 0, result.output
    assert "from the metadata row: spacing, orientation, position, rescale" in result.stderr and shot.is_file()
    viewer = make_napari_viewer()  # what `view` adds, inspected: the same read and layer data
    data, kwargs, _ = layer_data(read_ct(raw, metadata=row_for(read_metadata_table(table), raw)), raw)
    layer = viewer.add_image(data, **kwargs)
    assert np.array_equal(layer.data, truth.array) and tuple(layer.scale) == pytest.approx(truth.spacing)
    # the chat hands the layer to the model process, which rebuilds the volume from it
    replies: queue.Queue = queue.Queue()
    scan = ChatServer(replies.put, threading.Event())._volume("k", payload_of(layer))
    assert np.array_equal(scan.array, truth.array) and scan.spacing == pytest.approx(truth.spacing)
    assert scan.meta["modality"] == "CT"


def _import_with_metadata(tmp_path: Path, volumes: Path, table: Path) -> Store:
    def write(path: Path, header: list[str], row: list[object]) -> Path:
        with path.open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, row])
        return path

    labels = write(tmp_path / "labels.csv", ["VolumeName", *CT_RATE_LABELS], [NAME, *[0] * len(CT_RATE_LABELS)])
    reports = write(tmp_path / "reports.csv", ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN",
                                               "Impressions_EN"], [NAME, "Cough.", "Chest CT.", "Not given.", "Normal."])
    store = Store.create(f"sqlite:///{tmp_path / 'ctvqa.sqlite'}")
    import_ctrate(store.db, reports, labels, table, volumes)
    store.assign(["alice"], per_annotator=1, overlap=0, seed=0)
    return store


def test_imported_ctrate_volume_shows_the_original_in_the_rating_view(ctrate_like, make_napari_viewer, qtbot,
                                                                        tmp_path: Path) -> None:
    original, raw, table = ctrate_like
    truth = read_ct(original)
    store = _import_with_metadata(tmp_path, raw.parent, table)
    scan = store.scan_by_volume(NAME)
    assert scan.rescale_intercept == -1024 and scan.orientation == (1, 0, 0, 0, 1, 0)
    assert scan.spacing == pytest.approx(truth.spacing)
    widget = RatingWidget(make_napari_viewer(), store=store, annotator="alice")
    qtbot.addWidget(widget)
    layer = widget.viewer.layers[LAYER_NAME]
    assert np.array_equal(layer.data, truth.array) and tuple(layer.scale) == pytest.approx(truth.spacing)
    widget.close()
    store.close()


def test_a_tilted_series_opens_with_a_note(make_napari_viewer, tmp_path: Path, monkeypatch) -> None:
    import napari.utils.notifications as notifications

    write_phantom_series(tmp_path / "tilt", np.arange(12) * 2.5, tilt_degrees=15.0)
    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    data, kwargs, _ = read_ct_layers(str(tmp_path / "tilt"))[0]
    assert kwargs["metadata"]["ct_meta"]["resampled"]["tilt_degrees"] == pytest.approx(15.0, abs=0.05)
    assert any("gantry tilt of 15.0 degrees corrected" in text for text in shown)


def test_an_mr_series_opens_in_the_full_range_not_a_hu_window(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "mr", np.arange(4) * 3.0, modality="MR")
    data, kwargs, _ = read_ct_layers(str(tmp_path / "mr"))[0]
    assert tuple(kwargs["contrast_limits"]) == (float(data.min()), float(data.max()))
