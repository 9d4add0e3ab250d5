"""Which findings a synthetic patient has, where, and how they evolve over the scans a, b, c, ...

Patterns are chosen so that all four 3D-RAD temporal categories (refractory, resolved, new,
always absent) occur often: acute findings appear and resolve, chronic ones persist or appear.
"""
from __future__ import annotations

import numpy as np

from annotation.synth.anatomy import LOBES, Anatomy
from annotation.synth.lesions import PAINT_ORDER, Lesion

# label -> (kind, probability that a patient ever has it, chronic?); tuned so that the temporal
# answers come close to the 3D-RAD test split (D 64%, A 15%, B 14%, C 7%)
FINDINGS: dict[str, tuple[str, float, bool]] = {
    "Lung nodule": ("nodule", 0.5, False),
    "Pleural effusion": ("pleural_effusion", 0.45, False),
    "Cardiomegaly": ("cardiomegaly", 0.3, True),
    "Pericardial effusion": ("pericardial_effusion", 0.25, False),
    "Consolidation": ("consolidation", 0.4, False),
    "Emphysema": ("emphysema", 0.3, True),
    "Arterial wall calcification": ("arterial_calcification", 0.45, True),
    "Coronary artery wall calcification": ("coronary_calcification", 0.35, True),
    "Lymphadenopathy": ("lymphadenopathy", 0.4, False),
    "Atelectasis": ("atelectasis", 0.4, False),
    "Medical material": ("medical_material", 0.2, False),
    "Lung opacity": ("lung_opacity", 0.4, False),
    "Hiatal hernia": ("hiatal_hernia", 0.15, True),
    "Bronchiectasis": ("bronchiectasis", 0.2, True),
    "Pulmonary fibrotic sequela": ("fibrotic_sequela", 0.25, True),
}
#: CT-RATE labels the phantom cannot show: always 0 in the synthetic cohort.
NOT_SIMULATED = ("Mosaic attenuation pattern", "Peribronchial thickening", "Interlobular septal thickening")


def presence_pattern(rng: np.random.Generator, n_scans: int, chronic: bool) -> list[bool]:
    """Present/absent per scan: persistent, new (appears later), resolving, or transient."""
    if n_scans == 1:
        return [True]
    kinds = ["persistent", "new"] if chronic else ["persistent", "new", "resolving", "transient"]
    weights = [0.5, 0.5] if chronic else [0.15, 0.2, 0.5, 0.15]
    kind = rng.choice(kinds, p=weights)
    if kind == "transient" and n_scans < 3:
        kind = "resolving"
    if kind == "persistent":
        return [True] * n_scans
    if kind == "new":
        onset = int(rng.integers(1, n_scans))
        return [t >= onset for t in range(n_scans)]
    if kind == "resolving":
        end = int(rng.integers(1, n_scans))
        return [t < end for t in range(n_scans)]
    start = int(rng.integers(1, n_scans - 1))
    return [t == start for t in range(n_scans)]


def scales_for(rng: np.random.Generator, present: list[bool], chronic: bool) -> list[float]:
    """Size factor per scan (0 = absent): findings grow or shrink by up to ~20% between scans."""
    scale, out = 1.0, []
    for p in present:
        out.append(round(scale, 3) if p else 0.0)
        if p:
            scale = float(np.clip(scale * rng.uniform(1.0, 1.1) if chronic else scale * rng.uniform(0.85, 1.2), 0.75, 1.35))
    return out


def draw_lesions(an: Anatomy, rng: np.random.Generator, n_scans: int) -> list[Lesion]:
    """The patient's findings with their timelines, in painting order."""
    lesions = []
    for label, (kind, probability, chronic) in FINDINGS.items():
        if rng.random() >= probability:
            continue
        scales = scales_for(rng, presence_pattern(rng, n_scans, chronic), chronic)
        lesion = lesion_for(label, an, rng, scales)
        if lesion is not None:
            lesions.append(lesion)
    return sorted(lesions, key=lambda l: PAINT_ORDER.index(l.kind))


def lesion_for(label: str, an: Anatomy, rng: np.random.Generator, scales: list[float]) -> Lesion | None:
    """A finding for CT-RATE `label` placed in this anatomy, with the given size per scan (0 =
    absent); None when the anatomy has no room for it. Raises KeyError for labels not simulated."""
    if label not in FINDINGS:
        raise KeyError(f"{label!r} is not simulated (simulated: {', '.join(FINDINGS)})")
    kind = FINDINGS[label][0]
    lesion = _PLACERS[kind](an, rng)
    if lesion is not None:
        lesion.label, lesion.kind, lesion.scales = label, kind, list(scales)
    return lesion


def _lobe_point(an: Anatomy, rng: np.random.Generator, lobe: int, clearance: float,
                where=None) -> np.ndarray | None:
    """A point of `lobe` at least `clearance` mm from the lobe's border (checked on a sphere)."""
    mask = an.lobes == lobe
    if where is not None:
        mask &= where
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    grid = an.grid
    for candidate in rng.choice(idx, size=min(60, idx.size), replace=False):
        point = grid.to_mm(np.array(np.unravel_index(candidate, grid.shape)))
        box = grid.box(point - clearance, point + clearance)
        z, y, x = grid.coords(box)
        ball = ((z - point[0]) ** 2 + (y - point[1]) ** 2 + (x - point[2]) ** 2) <= clearance ** 2
        if (an.lobes[box][ball] == lobe).mean() > 0.97:
            return point
    return None


def _side(lobe: int) -> str:
    return LOBES[lobe][0]


def _place_nodule(an, rng):
    lobe = int(rng.integers(1, 6))
    size = float(rng.uniform(10, 26))
    point = _lobe_point(an, rng, lobe, size * 0.75 + 3)
    if point is None:
        return None
    return Lesion("", "", _side(lobe), an.lobe_name(lobe), lobe, point, size, {"aspect": float(rng.uniform(0.8, 1.1))})


def _parts(rng, size: float, flat: bool = False) -> list:
    parts = []
    for _ in range(3):
        offset = rng.uniform(-0.22, 0.22, 3) * size * np.array([0.5, 1, 1])
        radius = size / 2.6 * rng.uniform(0.75, 1.1, 3) * (np.array([0.35, 0.6, 1.2]) if flat else np.array([0.8, 1, 1]))
        parts.append((offset.tolist(), radius.tolist()))
    return parts


def _place_region(an, rng, lobes, size_range, flat=False, where=None):
    lobe = int(rng.choice(lobes))
    size = float(rng.uniform(*size_range))
    point = _lobe_point(an, rng, lobe, size * 0.3, where)
    if point is None:
        return None
    bronchi = [(rng.uniform(-0.3, 0.3), *(v / np.linalg.norm(v))) for v in rng.normal(size=(2, 2))]
    return Lesion("", "", _side(lobe), an.lobe_name(lobe), lobe, point, size,
                  {"parts": _parts(rng, size, flat), "bronchi": [list(b) for b in bronchi]})


def _place_consolidation(an, rng):
    return _place_region(an, rng, [1, 2, 3, 3, 4, 5, 5], (35, 60))


def _place_opacity(an, rng):
    return _place_region(an, rng, [1, 2, 3, 4, 5], (30, 55))


def _place_atelectasis(an, rng):
    z, y, _ = an.grid.coords()
    return _place_region(an, rng, [3, 5], (35, 50), flat=True, where=(z < an.dome[1] + 60) & (y > 10))


def _place_emphysema(an, rng):
    z = an.grid.coords()[0]
    idx = np.flatnonzero(np.isin(an.lobes, (1, 4)) & (z > an.carina[0] - 25))
    if idx.size < 100:
        return None
    pick = rng.choice(idx, size=70, replace=False)
    holes = [(an.grid.to_mm(np.array(np.unravel_index(i, an.grid.shape))).tolist(), float(rng.uniform(2.8, 6.0)))
             for i in pick]
    return Lesion("", "", "bilateral", "both lung upper lobes", None, np.zeros(3), 6.0, {"holes": holes})


def _place_effusion(an, rng):
    side = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.35, 0.25]))
    where = {"right": "right pleural space", "left": "left pleural space", "bilateral": "pleural spaces on both sides"}[side]
    return Lesion("", "", side, where, None, np.zeros(3), float(rng.uniform(15, 45)),
                  {"top": float(max(an.dome) + rng.uniform(70, 120))})


def _place_cardiomegaly(an, rng):
    return Lesion("", "", "midline", "heart", None, an.heart_centre.copy(), float(rng.uniform(1.42, 1.52)))


def _place_pericardial(an, rng):
    return Lesion("", "", "midline", "pericardium", None, an.heart_centre.copy(), float(rng.uniform(8, 16)))


def _place_arterial(an, rng):
    spots = []
    for _ in range(int(rng.integers(4, 9))):
        i = int(rng.integers(1, len(an.aorta) - 2))
        (p0, r0), (p1, r1) = an.aorta[i], an.aorta[i + 1]
        t = rng.uniform()
        p, r, axis = p0 + t * (p1 - p0), r0 + t * (r1 - r0), p1 - p0
        u = rng.normal(size=3)
        u -= (u @ axis) / (axis @ axis) * axis
        u /= np.linalg.norm(u)
        spots.append(((p + u * (r - 1.0)).tolist(), float(rng.uniform(2.2, 3.6))))
    return Lesion("", "", "midline", "thoracic aorta", None, an.aorta[2][0].copy(), 3.0, {"spots": spots})


def _place_coronary(an, rng):
    spots = []
    rot = an.heart_rotation
    for _ in range(int(rng.integers(3, 6))):
        u = rng.normal(size=3) * [0.5, 1, 1] + [0.8, -0.6, 0]
        u /= np.linalg.norm(u)
        surface = an.heart_centre + rot.T @ (an.heart_radii * u) + rot.T @ (u * 2.0)
        spots.append((surface.tolist(), float(rng.uniform(2.0, 3.2))))
    return Lesion("", "", "midline", "coronary arteries", None, an.heart_centre.copy(), 3.0, {"spots": spots})


def _place_nodes(an, rng):
    c = an.carina
    stations = {
        "subcarinal": c + [-24, 12, 2], "right paratracheal": c + [24, -4, -20],
        "prevascular": np.array([an.aorta[2][0][0] - 8, -40.0, 4.0]),
        "right hilar": an.hila["right"] + [-4, 4, -16], "left hilar": an.hila["left"] + [-4, 4, 16],
    }
    names = rng.choice(list(stations), size=int(rng.integers(1, 3)), replace=False)
    nodes = []
    for name in names:
        short = rng.uniform(7.5, 12.5)
        nodes.append((stations[name].tolist(), [short * 1.2, short, short * 1.3]))
    return Lesion("", "", "midline", " and ".join(names), None, stations[names[0]].copy(), 2 * nodes[0][1][1],
                  {"nodes": nodes})


def _place_device(an, rng):
    pacemaker = bool(rng.random() < 0.4)
    sign = 1 if pacemaker else -1
    x = 70.0 * sign
    a, (b_ant, _) = an.body_a, an.body_b
    y_front = -b_ant * (1 - abs(x / a) ** 2.2) ** (1 / 2.2)
    device = np.array([an.carina[0] + 50, y_front + max(an.fat / 2, 5) + 3, x])
    top = an.grid.shape[0] * an.grid.spacing[0] / 2
    svc = [np.array([min(top - 5, device[0] + 15), -18.0, -32.0]), np.array([an.heart_centre[0] + 40, -10.0, -30.0])]
    path = [device, np.array([device[0] + 12, device[1] + 25, x * 0.6]), *svc]
    if pacemaker:
        path.append(an.heart_centre + [-15, -12, -5])
    return Lesion("", "", "left" if pacemaker else "right",
                  "left infraclavicular pacemaker" if pacemaker else "right chest wall port catheter", None,
                  device, 0.0, {"name": "pacemaker" if pacemaker else "port catheter", "device": device.tolist(),
                                "device_radii": [6, 9, 22] if pacemaker else [5, 7, 13],
                                "device_hu": 2500.0 if pacemaker else 1200.0, "path": [p.tolist() for p in path]})


def _place_hernia(an, rng):
    centre = np.array([an.dome[1] + 6, an.spine_y - 30, 16.0])
    return Lesion("", "", "midline", "retrocardiac, above the hiatus", None, centre, float(rng.uniform(34, 46)))


def _place_bronchiectasis(an, rng):
    lobe = int(rng.choice([3, 5]))
    side = _side(lobe)
    bronchi = []
    for _ in range(3):
        end = _lobe_point(an, rng, lobe, 6.0)
        if end is None:
            return None
        start = an.hila[side] + [-20, 6, 10 * (1 if side == "left" else -1)]
        bronchi.append((start.tolist(), (start + 0.8 * (end - start)).tolist()))
    return Lesion("", "", side, an.lobe_name(lobe), lobe, np.asarray(bronchi[0][1]), float(rng.uniform(7, 10)),
                  {"bronchi": bronchi})


def _place_fibrotic(an, rng):
    lobe = int(rng.choice([1, 4]))
    z = an.grid.coords()[0]
    point = _lobe_point(an, rng, lobe, 10.0, where=z > an.carina[0] + 30)
    if point is None:
        return None
    bands = []
    for _ in range(int(rng.integers(3, 6))):
        a = point + rng.uniform(-10, 10, 3) * [0.5, 1, 1]
        d = rng.normal(size=3) * [0.3, 1, 1]
        bands.append((a.tolist(), (a + d / np.linalg.norm(d) * rng.uniform(20, 35)).tolist()))
    return Lesion("", "", _side(lobe), f"{_side(lobe)} lung apex", lobe, point, 25.0, {"bands": bands})


_PLACERS = {
    "nodule": _place_nodule, "pleural_effusion": _place_effusion, "cardiomegaly": _place_cardiomegaly,
    "pericardial_effusion": _place_pericardial, "consolidation": _place_consolidation,
    "emphysema": _place_emphysema, "arterial_calcification": _place_arterial,
    "coronary_calcification": _place_coronary, "lymphadenopathy": _place_nodes,
    "atelectasis": _place_atelectasis, "medical_material": _place_device, "lung_opacity": _place_opacity,
    "hiatal_hernia": _place_hernia, "bronchiectasis": _place_bronchiectasis, "fibrotic_sequela": _place_fibrotic,
}
