"""The phantom and its lesions, in memory: anatomy in the right HU ranges, every finding visible
where its mask says (by the contrast its type needs), measurements true of the volume, and
timelines that produce all four temporal categories."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from annotation.qa_templates import temporal_answer
from annotation.synth import Grid, default_spacing, synthesize_patient
from annotation.synth.anatomy import paint_heart
from annotation.synth.timeline import FINDINGS, NOT_SIMULATED, presence_pattern

SIZE = (48, 128, 128)


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid(SIZE, default_spacing(SIZE))


@pytest.fixture(scope="module")
def sick(grid: Grid):
    """One patient with every simulated finding present in its single scan."""
    return synthesize_patient(grid, np.random.default_rng(11), 1, findings={l: (1.0,) for l in FINDINGS})


def _full_mask(scan_shape, painted) -> np.ndarray:
    mask = np.zeros(scan_shape, bool)
    mask[painted.box] = painted.mask
    return mask


def test_base_anatomy_has_realistic_hounsfield_units(grid: Grid) -> None:
    patient = synthesize_patient(grid, np.random.default_rng(3), 1, findings={})
    hu, lobes = patient.scans[0].hu, patient.anatomy.lobes
    assert -900 < np.median(hu[lobes > 0]) < -780                    # aerated lung (vessels aside)
    assert set(np.unique(lobes)) == {0, 1, 2, 3, 4, 5}               # five lobes
    assert hu[:, :3, :].mean() < -950                                # air in front of the patient
    assert (hu > 500).sum() > 1000                                   # ribs and spine
    assert ((hu > -120) & (hu < -70)).sum() > 20000                  # subcutaneous and mediastinal fat
    assert patient.scans[0].labels == dict.fromkeys(patient.scans[0].labels, 0)


def test_every_simulated_finding_is_painted_and_labelled(sick) -> None:
    scan = sick.scans[0]
    kinds = {p.lesion.kind for p in scan.painted}
    assert kinds == {kind for kind, _, _ in FINDINGS.values()}
    assert {l for l, v in scan.labels.items() if v} == set(FINDINGS)
    assert all(scan.labels[l] == 0 for l in NOT_SIMULATED)


def test_each_lesion_is_visible_as_its_type_requires(sick) -> None:
    scan = sick.scans[0]
    hu, lobes = scan.hu, sick.anatomy.lobes
    normal_lung = np.median(hu[lobes > 0])
    masks = [_full_mask(hu.shape, p) for p in scan.painted]
    for painted, mask in zip(scan.painted, masks):
        others = np.logical_or.reduce([m for m in masks if m is not mask])
        own = mask & ~others  # where lesions overlap (a hernia behind an enlarged heart) use all of it
        inside = hu[own] if own.sum() >= 0.3 * mask.sum() else hu[mask]
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & ~others  # surroundings, no other lesion
        kind = painted.lesion.kind
        assert mask.sum() > 0, kind
        if kind in ("nodule", "consolidation", "atelectasis"):
            assert np.median(inside) > normal_lung + 500, kind  # soft tissue where lung should be
        elif kind in ("pleural_effusion", "pericardial_effusion"):
            assert -40 < np.median(inside) < 60, kind
        elif kind == "lung_opacity":
            assert -750 < np.median(inside) < -350  # ground glass: between lung and soft tissue
        elif kind == "emphysema":
            assert inside.mean() < normal_lung - 60
        elif kind in ("arterial_calcification", "coronary_calcification"):
            assert inside.mean() > 130, kind
        elif kind == "lymphadenopathy":
            assert 0 < np.median(inside) < 80 and hu[ring].mean() < np.median(inside) - 30
        elif kind == "medical_material":
            assert inside.max() > 1000
        elif kind == "bronchiectasis":
            assert (hu[mask] < -850).any() and (hu[mask] > -300).any()  # air lumen in a thick wall
        elif kind == "hiatal_hernia":
            assert (hu[mask] < -800).any() and np.median(hu[mask]) > -200  # a gas-filled sac
        elif kind == "fibrotic_sequela":
            assert inside.mean() > normal_lung + 200
        elif kind == "cardiomegaly":
            box, weight = paint_heart(sick.anatomy.hu.copy(), sick.anatomy, 1.0)
            columns = np.flatnonzero((weight > 0.5).any(axis=(0, 1)))
            normal = (columns[-1] - columns[0] + 1) * sick.anatomy.grid.spacing[2]
            enlarged = painted.record["size_mm"]["transverse"]
            thorax = sick.anatomy.measurements()["thoracic_transverse_diameter_mm"]
            assert enlarged > 1.3 * normal and enlarged / thorax > 0.45  # cardiothoracic ratio


def test_nodule_size_answer_matches_the_volume_within_one_voxel(grid: Grid) -> None:
    patient = synthesize_patient(grid, np.random.default_rng(5), 1, findings={"Lung nodule": (1.2,)})
    scan = patient.scans[0]
    (nodule,) = scan.painted
    k, j, i = (int(round(v)) for v in nodule.record["centre_voxel"])
    # measured on the image, in the nodule's central axial slice: soft tissue against lung (the
    # mask's edge is where the partial-volume blend is half nodule, about -410 HU)
    dense = ndimage.binary_opening(scan.hu[k] > -410)
    labels, _ = ndimage.label(dense)
    assert labels[j, i] > 0
    blob = labels == labels[j, i]
    js, is_ = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
    measured = sorted(((js[-1] - js[0] + 1) * grid.spacing[1], (is_[-1] - is_[0] + 1) * grid.spacing[2]), reverse=True)
    stated = nodule.record["size_mm"]["axial"]
    assert all(abs(m - s) <= grid.spacing[1] + 1 for m, s in zip(measured, stated)), (measured, stated)


def test_lesions_keep_their_place_and_follow_their_timeline(grid: Grid) -> None:
    patient = synthesize_patient(grid, np.random.default_rng(8), 3,
                                 findings={"Lung nodule": (1.0, 1.3, 0.0), "Pleural effusion": (0.0, 0.0, 1.0)})
    a, b, c = patient.scans
    assert [s.labels["Lung nodule"] for s in patient.scans] == [1, 1, 0]
    assert [s.labels["Pleural effusion"] for s in patient.scans] == [0, 0, 1]
    na, nb = a.painted[0].record, b.painted[0].record
    assert np.allclose(na["centre_mm"], nb["centre_mm"], atol=2 * grid.spacing[1])
    assert nb["size_mm"]["diameter"] > na["size_mm"]["diameter"]
    assert not np.array_equal(a.hu, b.hu)


def test_timelines_produce_all_four_temporal_categories_often() -> None:
    rng = np.random.default_rng(0)
    counts: Counter[str] = Counter()
    for chronic in (False, True) * 150:
        present = presence_pattern(rng, 3, chronic)
        counts[temporal_answer([int(p) for p in present[:2]], int(present[2]))] += 1
    total = sum(counts.values())
    assert set(counts) == {"A", "B", "C"}  # findings that exist at some scan; D comes from absent labels
    assert all(counts[k] / total > 0.1 for k in "ABC"), counts


def test_a_lesion_drawn_in_parts_records_each_parts_box(sick) -> None:
    """Calcified spots and the like are where their part boxes say, inside the whole box, and the
    parts cover far less of it than the box does: what the stem's dense targets read."""
    scan = sick.scans[0]
    many = {p.lesion.kind: p for p in scan.painted if "parts_bbox_voxel" in p.record}
    assert {"coronary_calcification", "arterial_calcification"} <= set(many)
    for painted in scan.painted:
        parts = painted.record.get("parts_bbox_voxel")
        if parts is None:
            continue
        whole = painted.record["bbox_voxel"]
        assert len(parts) > 1
        assert [min(p[n] for p in parts) for n in range(3)] == whole[:3]  # the parts span the whole box
        assert [max(p[n + 3] for p in parts) for n in range(3)] == whole[3:]
        if painted.lesion.kind.endswith("calcification"):
            volume = np.prod(np.subtract(whole[3:], whole[:3]))
            assert sum(np.prod(np.subtract(p[3:], p[:3])) for p in parts) < 0.5 * volume
            bright = [scan.hu[z1:z2, y1:y2, x1:x2].max() > 300 for z1, y1, x1, z2, y2, x2 in parts]
            assert sum(bright) > len(parts) / 2  # a spot's box holds it (unless a later lesion painted over it)
