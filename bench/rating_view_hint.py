"""How often the rating view opens a pair on a slice through its finding, on a synthetic cohort
whose ground truth says where every finding is: with the scan's finding boxes (what the rating
view does) against the baselines measured in the same run, the pair's words alone (no boxes, no
lung extent: the earlier view) and the middle slice.

    .venv/bin/python bench/rating_view_hint.py [--patients 8]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from annotation.importers.ctrate import import_ctrate
from annotation.importers.finding_boxes import import_finding_boxes
from annotation.store import Store
from annotation.synth import write_cohort
from annotation.view_hint import initial_view, lung_extent
from model.ct.io import read_ct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cohort(root / "c", args.patients, seed=0, size=(48, 128, 128), workers=1)
        store = Store.create(f"sqlite:///{root / 'db.sqlite'}")
        import_ctrate(store.db, root / "c/reports.csv", root / "c/labels.csv", root / "c/metadata.csv",
                      volumes=root / "c/volumes")
        import_finding_boxes(store, root / "c/ground_truth.json")
        truth = json.loads((root / "c/ground_truth.json").read_text())["volumes"]
        volumes: dict[str, tuple[int, object]] = {}
        located = {"finding boxes (rating view)": 0, "words only (baseline)": 0, "middle slice (baseline)": 0}
        n = 0
        for qa in store.qa_pairs():
            text = f"{qa.question} {qa.answer}".lower()
            lesions = [l for l in truth[qa.volume_name]["lesions"] if l["label"].lower() in text]
            if not lesions:
                continue
            if qa.volume_name not in volumes:
                array = read_ct(qa.path).array
                volumes[qa.volume_name] = (array.shape[0], lung_extent(array))
            depth, lungs = volumes[qa.volume_name]
            slices = {z for l in lesions for z in range(l["bbox_voxel"][0], l["bbox_voxel"][3])}
            n += 1
            boxes, labels = store.finding_boxes(qa.scan_id), store.labels(qa.scan_id)
            located["finding boxes (rating view)"] += initial_view(qa.question, qa.answer, depth, boxes, labels,
                                                                   lungs).slice_index in slices
            located["words only (baseline)"] += initial_view(qa.question, qa.answer, depth).slice_index in slices
            located["middle slice (baseline)"] += (depth - 1) // 2 in slices
        store.close()
    print(f"{n} pairs whose finding the phantom's ground truth locates ({args.patients} patients)")
    for name, hits in located.items():
        print(f"  {name:30s} {hits:4d} / {n}  = {100 * hits / max(n, 1):5.1f} % open on a slice through the finding")


if __name__ == "__main__":
    main()
