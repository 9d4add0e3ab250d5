"""A procedural chest CT in Hounsfield units: body wall, rib cage, spine, lungs with lobes,
vessels and airways, heart, great vessels, upper abdomen and the scanner table.

Each patient draws its own proportions, so a cohort does not look like one phantom repeated.
Everything is vectorised over the grid or over small boxes; the whole base volume of a
64x256x256 patient takes well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from annotation.synth.geometry import Grid, blend, ellipsoid, rotation_yx, soft_edge, tube

AIR, LUNG, FAT, FLUID, SOFT, MUSCLE, BLOOD, MYOCARDIUM, LIVER, BONE_MARROW, CORTEX = (
    -1000.0, -860.0, -95.0, 8.0, 35.0, 50.0, 38.0, 58.0, 60.0, 260.0, 900.0)

#: Values of `Anatomy.regions`: body (outside the organs below), right lung, left lung, mediastinum.
REGION_LABELS = {"body": 1, "lung_right": 2, "lung_left": 3, "mediastinum": 4}
LOBES = {1: ("right", "upper lobe"), 2: ("right", "middle lobe"), 3: ("right", "lower lobe"),
         4: ("left", "upper lobe"), 5: ("left", "lower lobe")}


@dataclass
class Anatomy:
    """One patient's proportions (mm, grid-centred coordinates) and the rendered base volume."""

    grid: Grid
    body_a: float             # half width of the body
    body_b: tuple[float, float]  # half depth anterior, posterior
    fat: float                # subcutaneous fat thickness
    cavity_a: float
    cavity_b: tuple[float, float]
    z_apex: float
    dome: tuple[float, float]  # right, left diaphragm dome heights
    carina: np.ndarray         # (z, y, x)
    hila: dict[str, np.ndarray]
    heart_centre: np.ndarray
    heart_radii: np.ndarray
    heart_angle: float
    aorta: list[tuple[np.ndarray, float]]  # centreline points with radius
    spine_y: float
    hu: np.ndarray = field(repr=False, default=None)      # float32 HU, blurred, no noise
    lobes: np.ndarray = field(repr=False, default=None)   # uint8 lobe id (LOBES), 0 outside lungs
    regions: np.ndarray = field(repr=False, default=None)  # uint8 REGION_LABELS map (organ masks' ground truth)

    @property
    def heart_rotation(self) -> np.ndarray:
        return rotation_yx(self.heart_angle)

    def lobe_name(self, lobe: int) -> str:
        side, name = LOBES[lobe]
        return f"{side} lung {name}"

    def measurements(self) -> dict[str, float]:
        """Normal-anatomy sizes that QA pairs ask about, measured on the rendered volume."""
        z = self.heart_centre[0]
        k = int(round(self.grid.to_voxel(np.array([z, 0, 0]))[0]))
        k = min(max(k, 0), self.grid.shape[0] - 1)
        return {
            "thoracic_transverse_diameter_mm": _width(self.lobes[k] > 0, self.grid.spacing[2]),
            "ascending_aorta_diameter_mm": round(2 * self.aorta[1][1]),
            "descending_aorta_diameter_mm": round(2 * self.aorta[-2][1]),
        }


def _width(mask2d: np.ndarray, step: float) -> float:
    """Left-right extent (mm) of a 2D (y, x) mask."""
    hits = np.flatnonzero(mask2d.any(axis=0))
    return float(round((hits[-1] - hits[0] + 1) * step)) if hits.size else 0.0


def draw_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """A new patient's proportions (no rendering yet)."""
    s = rng.uniform(0.9, 1.08)
    body_a = 165 * s * rng.uniform(0.94, 1.06)
    body_b = (108 * s * rng.uniform(0.92, 1.08), 98 * s)
    fat = rng.uniform(7, 24) * s
    wall = fat + 22
    cavity_a, cavity_b = body_a - wall - 4, (body_b[0] - wall - 6, body_b[1] - wall + 4)
    top = grid.shape[0] * grid.spacing[0] / 2
    z_apex = min(top - 12, 140 * s)
    dome_r = -95 * s + rng.uniform(-12, 12)
    dome = (dome_r, dome_r - rng.uniform(8, 20))
    spine_y = cavity_b[1] - 24
    carina = np.array([z_apex - 95 * s, spine_y - 52, rng.uniform(-3, 3)])
    hila = {"right": carina + [-18, 8, -48 * s], "left": carina + [-28, 14, 50 * s]}
    heart_centre = np.array([dome[1] + 40 * s, -22 * s, 22 * s + rng.uniform(-6, 6)])
    heart_radii = np.array([44, 42, 54]) * s * rng.uniform(0.92, 1.05)
    z_arch = carina[0] + 22
    asc = np.array([heart_centre[0] + 30, -12.0, -10 * s])
    aorta = [
        (asc, 15 * s), (np.array([z_arch - 10, -14, -14 * s]), 16 * s),
        (np.array([z_arch, 5, -2 * s]), 14 * s), (np.array([z_arch - 4, spine_y - 32, 18 * s]), 13 * s),
        (np.array([carina[0] - 20, spine_y - 24, 22 * s]), 12.5 * s),
        (np.array([dome[1] - 20, spine_y - 22, 12 * s]), 12 * s),
        (np.array([dome[1] - 80, spine_y - 24, 4 * s]), 11 * s),
    ]
    return Anatomy(grid, body_a, body_b, fat, cavity_a, cavity_b, z_apex, dome, carina, hila,
                   heart_centre, heart_radii, rng.uniform(0.55, 0.8), aorta, spine_y)


def _superellipse(y: np.ndarray, x: np.ndarray, a: float, b_ant: float, b_post: float,
                  p_ant: float = 2.2, p_post: float = 3.2) -> np.ndarray:
    """Normalised radius of a body-like cross-section (flatter at the back, where it lies on the
    table), on the 2D (y, x) plane only: it is homogeneous, so a slice scaled by f has radius r / f."""
    post = y > 0
    b = np.where(post, b_post, b_ant).astype(np.float32)
    p = np.where(post, p_post, p_ant).astype(np.float32)
    return ((np.abs(x / np.float32(a)) ** p + np.abs(y / b) ** p) ** (1 / p)).astype(np.float32)


def _ellipse(y: np.ndarray, x: np.ndarray, a: np.ndarray, b_ant: np.ndarray, b_post: np.ndarray) -> np.ndarray:
    """Normalised radius of an ellipse whose half axes vary with z (cheap: squares only)."""
    b = np.where(y > 0, b_post, b_ant)
    return np.sqrt((x / a) ** 2 + (y / b) ** 2).astype(np.float32)


def _depth(y: np.ndarray, x: np.ndarray, rnorm: np.ndarray) -> np.ndarray:
    """Approximate mm inside a contour along the ray from its centre (negative outside)."""
    rho = np.sqrt(x * x + y * y)
    return rho * (np.float32(1.0) / np.maximum(rnorm, np.float32(1e-6)) - np.float32(1.0))


def render_anatomy(an: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Render the base HU volume and the lobe map into `an` (and return it)."""
    grid = an.grid
    z, y, x = grid.coords()
    shape = grid.shape
    vol = np.full(shape, AIR, np.float32)

    # scanner table: two thin curved carbon shells with foam between, under the patient's back
    y_back = an.body_b[1]
    y_top = y_back + 3 - x * x / 2500
    yy = y - y_top
    vol[:] = np.where((yy > 0) & (yy < 2.5) | (yy > 38) & (yy < 41), 180.0, vol)
    vol[:] = np.where((yy >= 2.5) & (yy <= 38), -930.0, vol)

    # body wall: skin, subcutaneous fat, muscle; slightly narrower towards the neck
    taper = np.clip((z - (an.z_apex - 40)) / 80, 0, 1)
    body = _superellipse(y, x, an.body_a, an.body_b[0], an.body_b[1]) / (1 - 0.11 * taper)
    depth = _depth(y, x, body)
    inside = depth > 0
    vol[inside] = FAT
    vol[inside & (depth < 2.0)] = SOFT
    cav_a = an.cavity_a * (1 - 0.12 * taper)
    apex = np.sqrt(np.clip((an.z_apex - z) / 150, 0.0, 1.0))
    cavity = _ellipse(y, x, cav_a * (0.25 + 0.75 * apex), an.cavity_b[0] * (0.45 + 0.55 * apex),
                      an.cavity_b[1] * (0.7 + 0.3 * apex))
    cdepth = _depth(y, x, cavity)
    # chest wall muscle: thin intercostal layer at the sides, thicker towards the front and back
    wall = 11 + 9 * np.abs(y) / np.sqrt(x * x + y * y + 1)
    muscle = inside & (depth >= an.fat) & (cdepth > -wall)
    vol[muscle] = MUSCLE
    _paint_back_and_pectoral_muscles(vol, an, z, y, x, inside, depth)

    # diaphragm domes: lungs above, upper abdomen below
    dome_r = an.dome[0] - ((x + 55) / 75) ** 2 * 28 - (y / 110) ** 2 * 25
    dome_l = an.dome[1] - ((x - 55) / 75) ** 2 * 28 - (y / 110) ** 2 * 25
    diaphragm = np.where(x < 0, dome_r, dome_l)
    in_cavity = (cdepth > 0) & (z < an.z_apex + 8)
    above = z > diaphragm
    _paint_abdomen(vol, an, y, x, in_cavity & ~above)

    # mediastinum and lungs
    mediastinum = _mediastinum_mask(an, z, y, x, shape)
    lungs = in_cavity & above & ~mediastinum
    vol[in_cavity & above & mediastinum] = FAT
    lung_hu = LUNG + 30 * np.clip(y / an.cavity_b[1], -1, 1) + _texture(shape, rng, 18.0)
    vol[lungs] = lung_hu[lungs]
    an.lobes = _lobes(an, z, y, x, lungs)
    an.regions = _regions(inside, in_cavity & above & mediastinum, an.lobes)
    _paint_fissures(vol, an, z, y, x, lungs)

    _paint_ribs_sternum_scapulae(vol, an, z, y, x, cdepth, inside)
    _paint_spine(vol, an, z, y, x)
    paint_heart(vol, an, 1.0)
    _paint_great_vessels(vol, an)
    _paint_airways(vol, an)
    _paint_lung_vessels(vol, an, rng, lungs)
    vol = ndimage.gaussian_filter(vol, sigma=(0.45, 0.7, 0.7), mode="nearest")
    an.hu = vol
    return an


def _texture(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth low-frequency variation so that parenchyma is not flat."""
    coarse = rng.standard_normal((max(shape[0] // 4, 2), max(shape[1] // 12, 2), max(shape[2] // 12, 2))).astype(np.float32)
    mid = (shape[0], -(-shape[1] // 4), -(-shape[2] // 4))  # interpolate at quarter in-plane resolution
    smooth = ndimage.zoom(coarse, [m / c for m, c in zip(mid, coarse.shape)], order=1, mode="nearest")
    full = np.repeat(np.repeat(smooth, 4, axis=1), 4, axis=2)
    return full[: shape[0], : shape[1], : shape[2]] * np.float32(amplitude)


def _paint_back_and_pectoral_muscles(vol, an, z, y, x, inside, depth) -> None:
    """Paraspinal muscle bellies beside the spinous processes and pectorals over the upper chest."""
    sy = an.spine_y
    for side in (-1, 1):
        r = ((x - side * 32) / 30) ** 2 + ((y - (sy + 42)) / 26) ** 2
        vol[inside & (r < 1)] = MUSCLE
        pect = inside & (depth > an.fat) & (depth < an.fat + 14) & (y < -20) & (side * x > 25) & (z > an.carina[0] - 40)
        vol[pect] = MUSCLE


def _paint_abdomen(vol, an, y, x, below) -> None:
    """Under the domes: liver on the right (reaching left in front), stomach with its gas
    bubble and spleen on the left."""
    vol[below] = 25.0
    vol[below & ((x < 25) | (y < -30))] = LIVER
    grid = an.grid
    stomach_c = np.array([an.dome[1] - 38, -20.0, 60.0])
    box, w = ellipsoid(grid, stomach_c, np.array([36.0, 42.0, 42.0]))
    if box is not None:
        w = w * below[box]
        blend(vol, box, w, 20.0)
        yy = grid.coords(box)[1]
        blend(vol, box, w * (yy < stomach_c[1] - 12), AIR)  # supine: gas rises anteriorly
    box, w = ellipsoid(grid, np.array([an.dome[1] - 35, 55.0, 88.0]), np.array([40.0, 40.0, 22.0]),
                       rotation_yx(-0.6))
    if box is not None:
        blend(vol, box, w * below[box], 48.0)


def _mediastinum_mask(an: Anatomy, z, y, x, shape) -> np.ndarray:
    """Everything between the lungs: a central column, the heart with its fat, the great
    vessels and the spine, each with a margin so that lungs keep a clean border."""
    grid = an.grid
    half = 10 + 0.04 * np.maximum(-y, 0) + 6 * np.clip((an.carina[0] - z) / 60, 0, 1)
    med = np.broadcast_to((np.abs(x - 4) < half) & (y < an.spine_y + 30), shape).copy()
    med |= (x / 30) ** 2 + ((y - an.spine_y) / 28) ** 2 < 1  # the spine and its paravertebral gutters
    box, w = ellipsoid(grid, an.heart_centre, an.heart_radii + 7, an.heart_rotation)
    if box is not None:
        med[box] |= w > 0.5
    for (p0, r0), (p1, r1) in zip(an.aorta, an.aorta[1:]):
        box, w = tube(grid, p0, p1, max(r0, r1) + 5)
        if box is not None:
            med[box] |= w > 0.5
    return med


def _regions(body: np.ndarray, mediastinum: np.ndarray, lobes: np.ndarray) -> np.ndarray:
    """The organ label map (REGION_LABELS) that `ctvqa synth` exports beside each volume."""
    regions = np.zeros(lobes.shape, np.uint8)
    regions[np.broadcast_to(body, lobes.shape)] = REGION_LABELS["body"]
    regions[np.broadcast_to(mediastinum, lobes.shape)] = REGION_LABELS["mediastinum"]
    regions[(lobes >= 1) & (lobes <= 3)] = REGION_LABELS["lung_right"]
    regions[lobes >= 4] = REGION_LABELS["lung_left"]
    return regions


def _lobes(an: Anatomy, z, y, x, lungs) -> np.ndarray:
    """Right upper/middle/lower and left upper/lower lobes from oblique and horizontal fissures."""
    lobes = np.zeros(lungs.shape, np.uint8)
    oblique = _oblique_height(an, y, x)
    lower = z < oblique
    right = np.broadcast_to(x < 0, lungs.shape)
    horizontal = an.carina[0] - 35
    lobes[lungs & right & lower] = 3
    lobes[lungs & right & ~lower & (z < horizontal)] = 2
    lobes[lungs & right & ~lower & (z >= horizontal)] = 1
    lobes[lungs & ~right & lower] = 5
    lobes[lungs & ~right & ~lower] = 4
    return lobes


def _oblique_height(an: Anatomy, y, x):
    """Height of the oblique fissure: high at the back (about T4), low at the front (diaphragm),
    and lower laterally, so that an axial slice cuts it as an oblique line in each lung."""
    post, ant = an.carina[0] + 10, an.dome[1] + 10
    frac = np.clip((y + 0.6 * np.abs(x) - 20 + an.cavity_b[0]) / (an.cavity_b[0] + an.cavity_b[1]), 0, 1)
    return ant + (post - ant) * frac


def _paint_fissures(vol, an, z, y, x, lungs) -> None:
    dist = np.abs(z - _oblique_height(an, y, x)) / 2.2
    line = lungs & (dist < 0.8)
    vol[line] += 120.0


def _paint_ribs_sternum_scapulae(vol, an, z, y, x, cdepth, inside) -> None:
    """Ribs slope down from the spine to the front, so each axial slice cuts several of them into
    short arcs; the costal cartilages, the sternum and the scapulae complete the cage."""
    ring = inside & (cdepth < -1.5) & (cdepth > -9.5) & (z > an.dome[0] - 60) & (z < an.z_apex + 10)
    k, j, i = np.nonzero(ring)
    zz, yy, xx, depth = z.ravel()[k], y.ravel()[j], x.ravel()[i], cdepth[k, j, i]
    phi = np.arctan2(np.abs(xx), yy - an.spine_y + 20)  # 0 at the back, pi at the front
    drop, pitch = 95.0, 27.0
    dz = (zz + drop * (phi / np.pi) ** 1.4 - an.z_apex) % pitch - pitch / 2
    bone = (np.abs(dz) < 4.5) & (phi > 0.35)
    cortex = (np.abs(dz) > 3.0) | (depth > -3.0) | (depth < -8.0)
    cartilage = (phi > 2.35) & (np.abs(xx) > 12)
    hu = np.where(cartilage, 120.0, np.where(cortex, CORTEX * 0.8, BONE_MARROW))
    vol[k[bone], j[bone], i[bone]] = hu[bone]
    oval = (x / 17) ** 2 + ((cdepth + 7) / 6.5) ** 2
    sternum = inside & (oval < 1) & (y < 0) & (z > an.heart_centre[0] - 60) & (z < an.z_apex - 10)
    vol[sternum] = np.where(oval > 0.6, CORTEX * 0.8, BONE_MARROW)[sternum]
    phi2 = np.arctan2(np.abs(x), y - an.spine_y + 20)
    scap = inside & (cdepth < -16) & (cdepth > -22) & (phi2 > 0.55) & (phi2 < 1.25) & (z > an.carina[0] - 30)
    vol[scap] = CORTEX * 0.7


def _paint_spine(vol, an, z, y, x) -> None:
    sy = an.spine_y
    r = np.sqrt((x / 21) ** 2 + ((y - sy) / 17) ** 2)
    body = r < 1
    disc = ((z + 1000) % 26) < 5
    vol[:] = np.where(body, np.where(disc, 85.0, np.where(r > 0.86, CORTEX, BONE_MARROW)), vol)
    canal = np.sqrt(x ** 2 + (y - sy - 27) ** 2)
    arch = (canal > 8) & (canal < 13.5) & (y > sy + 14)
    spinous = (np.abs(x) < 4.5) & (y > sy + 36) & (y < sy + 62)
    transverse = (np.abs(y - sy - 26) < 5) & (np.abs(x) < 40) & (np.abs(x) > 10)
    inside = _superellipse(y, x, an.body_a, an.body_b[0], an.body_b[1] - 6) < 1  # 2D: spine is straight
    vol[:] = np.where((arch | spinous | transverse) & inside, 600.0, vol)
    vol[:] = np.where(canal < 8, 20.0, vol)


def paint_heart(vol: np.ndarray, an: Anatomy, scale: float) -> tuple:
    """Heart in its fat: pericardium, myocardium, blood pools and a septum hinting the chambers.
    Returns the outer (box, weight) so that lesions can measure or surround it."""
    grid, rot = an.grid, an.heart_rotation
    radii = an.heart_radii * np.array([1.0, scale, scale])
    outer = ellipsoid(grid, an.heart_centre, radii + 6, rot)
    blend(vol, *outer, FAT)
    peri = ellipsoid(grid, an.heart_centre, radii + 1.5, rot)
    blend(vol, *peri, 25.0)
    box, w = ellipsoid(grid, an.heart_centre, radii, rot)
    blend(vol, box, w, MYOCARDIUM)
    inner_box, inner = ellipsoid(grid, an.heart_centre, radii - 9, rot)
    if inner_box is not None:
        z, y, x = grid.coords(inner_box)
        c = an.heart_centre
        across = rot[2, 1] * (y - c[1]) + rot[2, 2] * (x - c[2])  # along the short axis
        septum = soft_edge(5.0 - np.abs(across + 6), grid.soft)
        blend(vol, inner_box, inner * (1 - septum), BLOOD)
    return box, w


def _paint_great_vessels(vol, an: Anatomy) -> None:
    grid = an.grid
    for (p0, r0), (p1, r1) in zip(an.aorta, an.aorta[1:]):
        blend(vol, *tube(grid, p0, p1, (r0 + r1) / 2), BLOOD)
    c = an.carina
    asc = an.aorta[0][0]
    trunk = [np.array([an.heart_centre[0] + 35, -30.0, 18.0]), np.array([c[0] - 12, -10.0, 10.0])]
    blend(vol, *tube(grid, *trunk, 13.0), BLOOD)
    for side in ("right", "left"):
        blend(vol, *tube(grid, trunk[1], an.hila[side] + [0, -6, 0], 9.5), BLOOD)
    top = grid.shape[0] * grid.spacing[0] / 2 + 5
    blend(vol, *tube(grid, np.array([top, -18.0, -32.0]), np.array([asc[0] - 10, -8.0, -30.0]), 9.0), BLOOD)
    arch_top = an.aorta[2][0]
    for dx, dy in ((-14, -8), (0, 0), (16, 8)):
        blend(vol, *tube(grid, arch_top + [0, dy, dx], np.array([top, arch_top[1] + dy, dx * 1.6]), 5.0), BLOOD)
    oes = [np.array([top, an.spine_y - 28, 4.0]), np.array([an.dome[1] - 10, an.spine_y - 30, 22.0])]
    blend(vol, *tube(grid, *oes, 7.5), 40.0)
    blend(vol, *tube(grid, *oes, 2.0), AIR)


def _paint_airways(vol, an: Anatomy) -> None:
    grid, c = an.grid, an.carina
    top = grid.shape[0] * grid.spacing[0] / 2 + 5
    segments = [(np.array([top, c[1] - 4, c[2]]), c, 9.0)]
    for side in ("right", "left"):
        segments.append((c, an.hila[side], 6.5 if side == "right" else 5.5))
    for p0, p1, r in segments:
        blend(vol, *tube(grid, p0, p1, r + 1.8), 45.0)
    for p0, p1, r in segments:
        blend(vol, *tube(grid, p0, p1, r), AIR)


def _paint_lung_vessels(vol, an: Anatomy, rng, lungs) -> None:
    """Branching vessel trees from each hilum towards random points spread through the lung,
    with bronchi beside the larger branches (the bronchovascular bundles)."""
    grid = an.grid
    for side, sign in (("right", -1), ("left", 1)):
        idx = np.flatnonzero(lungs & (np.sign(grid.coords()[2]) == sign))
        if idx.size == 0:
            continue
        pick = rng.choice(idx, size=min(220, idx.size), replace=False)
        targets = grid.to_mm(np.stack(np.unravel_index(pick, grid.shape), axis=1))
        segments: list[tuple[np.ndarray, np.ndarray, float, int]] = []
        _grow(an.hila[side], targets, 5.5, 0, segments)
        for p0, p1, r, depth in segments:
            box, w = tube(grid, p0, p1, r)
            if box is not None:
                blend(vol, box, w * lungs[box], BLOOD)
            if depth <= 2 and r > 2.0:
                d = p1 - p0
                off = np.cross(d, [1.0, 0.0, 0.0])
                off = off / (np.linalg.norm(off) or 1) * (r + 0.8 * r + 2.0)
                ra = 0.8 * r
                box, w = tube(grid, p0 + off, p1 + off, ra + 1.3)
                if box is not None:
                    blend(vol, box, w * lungs[box], 30.0)
                    box2, w2 = tube(grid, p0 + off, p1 + off, ra)
                    if box2 is not None:
                        blend(vol, box2, w2 * lungs[box2], AIR)


def _grow(root: np.ndarray, targets: np.ndarray, radius: float, depth: int,
          segments: list[tuple[np.ndarray, np.ndarray, float, int]]) -> None:
    """Split the targets along their main axis, branch half-way towards each group's centre and
    recurse: a cheap space-filling tree whose calibres shrink by generation."""
    if len(targets) <= 2 or depth >= 4:
        for t in targets:
            segments.append((root, t, max(radius * 0.55, 1.2), depth))
        return
    centred = targets - targets.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ axis)
    parts = 3 if len(targets) >= 12 and depth == 0 else 2
    for group in np.array_split(targets[order], parts):
        end = root + 0.5 * (group.mean(axis=0) - root)
        segments.append((root, end, radius, depth))
        _grow(end, group, radius * 0.72, depth + 1, segments)


def build_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Draw and render one patient's base anatomy."""
    return render_anatomy(draw_anatomy(grid, rng), rng)
