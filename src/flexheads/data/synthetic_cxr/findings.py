"""The findings: each edits a ``chest.Chest``'s fields where its lesion is and returns the lesion's mask.

The masks are cut to the lung fields except Cardiomegaly and Hernia, which lie in the body (``IN_BODY``):
Atelectasis a plate-like band or a wedge from the hilum; Cardiomegaly heart borders reaching 1.35-1.6x as far
(cardiothoracic ratio ~0.55-0.6, widened by ``anatomy.sample_anatomy``; mask = the enlarged heart); Effusion fluid at
a lung base with a meniscus, higher laterally, blunting the costophrenic angle; Infiltration patchy ill-defined
airspace opacity; Mass a lobulated sphere 3-6 cm across, Nodule 1-3 spheres of 1.5-2.8 cm (some calcified);
Pneumonia lobar consolidation (an upper lobe bounded by the fissure, the middle lobe or a lower lobe) with air
bronchograms; Pneumothorax apical-lateral air without lung markings outside a visible pleural line; Consolidation a
dense segmental opacity with air bronchograms; Edema bilateral perihilar (bat-wing) haze with Kerley B lines;
Emphysema large hyperlucent lungs, flat low domes, a narrow heart and pruned peripheral vessels (mask = the lungs);
Fibrosis reticular lines in the peripheral lower zones with volume loss; Pleural_Thickening a band along the lateral
chest wall or an apical cap; Hernia a retrocardiac rounded opacity with an air-fluid level; COVID-19 bilateral
peripheral lower-zone ground glass (vessels stay visible).  Sizes assume a 43 cm field of view (1 image width).

Each takes the chest, a generator for the lesion's geometry (seeded by patient and finding, so a lesion keeps its
place on follow-up films) and one for this image's texture; it edits the chest's fields and returns its mask.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from flexheads.data.synthetic_cxr.chest import Chest, noise, on, smoothstep


def _opacify(c: Chest, opacity: np.ndarray, vessels_kept: float = 0.0) -> None:
    """Airspace disease: fluid or cells replace the fraction ``opacity`` of the air; lung markings fade with it
    (``vessels_kept`` of them stay visible through ground glass)."""
    c.air *= 1 - opacity
    c.vessel_gain *= 1 - (1 - vessels_kept) * opacity


def _side(geo: np.random.Generator, right: float = 0.5) -> float:
    """-1.0 (the patient's right, on the image left) with probability ``right``, else +1.0."""
    return -1.0 if geo.random() < right else 1.0


def _bronchograms(c: Chest, rng: np.random.Generator, region: np.ndarray, centre: tuple[float, float]) -> None:
    """Air bronchograms: dark tubes across a consolidation, pointing away from the hilum."""
    canvas = Image.new("F", (c.size, c.size), 0.0)
    draw = ImageDraw.Draw(canvas)
    hilum = np.array([c.a.cx + math.copysign(c.a.mediastinum + 0.03, centre[0] - c.a.cx), 0.41])
    heading = math.atan2(centre[1] - hilum[1], centre[0] - hilum[0])
    for angle in heading + rng.normal(0, 0.35, 4):
        step = np.array([math.cos(angle), math.sin(angle)])
        ends = c.to_pixels(np.stack([np.array(centre) - 0.06 * step, np.array(centre) + 0.06 * step]))
        draw.line([tuple(p) for p in ends.tolist()], fill=1.0, width=max(1, round(c.size / 100)))
    c.extra -= 4.0 * ndimage.gaussian_filter(np.asarray(canvas), 0.5 * c.size / 256, mode="nearest") * region


def _atelectasis(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side = _side(geo, 0.55)
    if geo.random() < 0.6:  # plate-like (discoid) band in a lower zone
        cu, cv = c.lung_point(geo, side, (0.25, 0.75), (0.6, 0.85))
        angle, length = geo.uniform(-0.35, 0.35), geo.uniform(0.07, 0.14)
        thick = max(geo.uniform(0.008, 0.016), 1.0 / c.size)  # at least a pixel at any size
        du, dv = c.u - cu, c.v - cv
        along = (math.cos(angle) * du + math.sin(angle) * dv) / length
        across = (math.cos(angle) * dv - math.sin(angle) * du) / thick
        region = smoothstep((1 - np.abs(across)) / 0.4) * smoothstep((1 - np.abs(along)) / 0.2)
    else:  # segmental collapse: a wedge from the hilum toward the base
        hu, hv = c.a.cx + side * (c.a.mediastinum + 0.03), 0.42
        cu, cv = c.lung_point(geo, side, (0.4, 0.8), (0.7, 0.9))
        reach, spread = math.hypot(cu - hu, cv - hv), geo.uniform(0.12, 0.22)
        along = ((c.u - hu) * (cu - hu) + (c.v - hv) * (cv - hv)) / reach  # distance along the wedge's axis
        across = np.abs((c.v - hv) * (cu - hu) - (c.u - hu) * (cv - hv)) / reach
        region = smoothstep((spread * along - across) / 0.01) * smoothstep((1.15 * reach - along) / 0.02)
        region *= along > 0.2 * reach
    region = region * c.field
    _opacify(c, 0.9 * region)
    c.extra += 1.0 * region
    return region > 0.3


def _cardiomegaly(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    return c.heart_region & (c.v < c.diaphragm)  # sample_anatomy widened the heart


def _effusion(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(c.field)
    for side in (-1.0, 1.0) if geo.random() < 0.3 else (_side(geo),):
        height = geo.uniform(0.06, 0.18)  # of the fluid above the costophrenic angle, at the chest wall
        top = float(c.dome_at(c.a.ribcage, side)) - height
        level = top + 0.6 * height * (1 - c.fx) * (1 - c.fx)  # meniscus: the fluid climbs the chest wall
        fluid = smoothstep((c.v - level) / 0.012) * (c.field & (c.side == side))
        _opacify(c, fluid)
        c.extra += 2.0 * fluid
        mask |= fluid > 0.3
    return mask


def _infiltration(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    patchy = 0.45 + 0.55 * smoothstep((noise(rng, c.size, 14) + 0.6) / 1.2)  # the centres always show
    region = np.zeros_like(c.u)
    for _ in range(geo.integers(1, 4)):
        centre = c.lung_point(geo, _side(geo), (0.2, 0.8), (0.25, 0.85))
        region = np.maximum(region, smoothstep(1 - c.distance(centre, geo.uniform(0.06, 0.12))) * patchy)
    region *= c.field
    _opacify(c, 0.7 * region, vessels_kept=0.3)
    c.extra += 1.0 * region
    return region > 0.3


def _mass(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    centre = c.lung_point(geo, _side(geo), (0.3, 0.75), (0.15, 0.75))
    radius, phase = geo.uniform(0.035, 0.07), geo.uniform(0, 2 * np.pi)
    du, dv = c.u - centre[0], c.v - centre[1]
    d = c.distance(centre, radius) / (1 + 0.12 * np.sin(3 * np.arctan2(dv, du) + phase))  # lobulated
    region = np.sqrt(np.clip(1 - d * d, 0, 1)) * c.field  # a sphere's thickness
    _opacify(c, 0.75 * region)
    c.extra += 0.5 * region
    return (d < 1) & c.field


def _nodule(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(c.field)
    for _ in range(geo.choice([1, 2, 3], p=[0.6, 0.25, 0.15])):
        radius = max(geo.uniform(0.018, 0.032), 0.75 / c.size)  # covers a pixel centre at any size
        d = c.distance(c.lung_point(geo, _side(geo), (0.2, 0.85), (0.1, 0.85)), radius)
        region = np.sqrt(np.clip(1 - d * d, 0, 1)) * c.field  # a sphere's thickness
        _opacify(c, 0.6 * region)
        c.extra += (3.0 if geo.random() < 0.2 else 0.5) * region  # some are calcified granulomas
        mask |= (d < 1) & c.field
    return mask


def _pneumonia(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    lobe = geo.choice(["RUL", "RML", "RLL", "LUL", "LLL"], p=[0.2, 0.15, 0.3, 0.1, 0.25])
    side = -1.0 if lobe[0] == "R" else 1.0
    fissure = c.a.apex + 0.4 * (c.a.dome - c.a.apex)  # the horizontal fissure's height
    wobble = 0.15 * noise(rng, c.size, 14)  # edges other than the fissure are ill-defined
    zone = {
        "RUL": on(c.v < fissure),  # bounded below by the fissure: a sharp straight edge
        "RML": smoothstep((c.v - fissure) / 0.01) * smoothstep((0.65 + wobble - c.fx) / 0.15),
        "RLL": smoothstep((c.fv - 0.45 + wobble) / 0.2),
        "LUL": smoothstep((0.55 + wobble - c.fv) / 0.15),
        "LLL": smoothstep((c.fv - 0.5 + wobble) / 0.2),
    }[lobe]
    patchy = 0.4 + 0.6 * smoothstep((noise(rng, c.size, 10) + 1.2) / 1.0)
    region = zone * patchy * (c.field & (c.side == side))
    _opacify(c, 0.9 * region)
    c.extra += 1.0 * region
    fv = {"RUL": (0.2, 0.3), "LUL": (0.2, 0.35)}.get(lobe, (0.6, 0.75))
    _bronchograms(c, rng, region, c.lung_point(geo, side, (0.4, 0.6), fv))
    return region > 0.3


def _pneumothorax(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side = _side(geo)
    gap, reach = max(geo.uniform(0.025, 0.075) * c.size, 2.0), geo.uniform(0.4, 0.85)  # rim (px), extent down
    lung = c.field & (c.side == side)
    inside = ndimage.distance_transform_edt(lung).astype(np.float32)  # px to the lung's border
    edge = gap * np.sqrt(np.clip((reach - c.fv) / reach, 0, 1))  # the pleural line curves back to the wall
    outer = lung & ((c.fx > 0.3) | (c.fv < 0.12))  # apical and lateral, not along the mediastinum or the dome
    region = outer & (inside < edge)
    line = outer & (inside >= edge) & (inside < edge + max(1.0, c.size / 200)) & (edge > 0)
    c.air = np.where(region, 1.1 * c.a.aeration * c.tissue, c.air * (1 - 0.1 * lung))  # no lung outside the line
    c.vessel_gain *= ~region
    c.extra += 2.5 * line
    return region


def _consolidation(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    centre = c.lung_point(geo, _side(geo), (0.3, 0.7), (0.3, 0.85))
    d = c.distance(centre, geo.uniform(0.06, 0.1)) / (1 + 0.3 * np.clip(noise(rng, c.size, 12), -1.5, 1.5))
    region = smoothstep((1 - d) / 0.6) * c.field  # a ragged edge, the centre always dense
    _opacify(c, 0.8 * region)
    _bronchograms(c, rng, region, centre)
    return region > 0.5


def _edema(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    dx, dv = (c.lat - c.medial - 0.04) / 0.13, (c.v - 0.42) / 0.14
    patchy = 0.6 + 0.4 * smoothstep((noise(rng, c.size, 8) + 1) / 2)
    region = np.exp(-(dx * dx + dv * dv)) * patchy * c.field  # bat wing
    _opacify(c, 0.7 * region, vessels_kept=0.3)
    c.extra += 1.0 * region
    kerley = np.zeros_like(c.field)
    for side in (-1.0, 1.0):  # Kerley B lines: short horizontal lines at the lateral bases
        for _ in range(geo.integers(3, 7)):
            y = c.a.dome - geo.uniform(0.0, 0.08)
            kerley |= (c.side == side) & (np.abs(c.v - y) < 0.6 / c.size + 0.002) & (c.lateral - c.lat < 0.03)
    kerley &= c.field
    c.extra += 2.0 * kerley
    return (region > 0.3) | kerley


def _emphysema(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    c.vessel_gain *= np.clip(1.25 - 1.3 * c.fx, 0.15, 1)  # pruned peripheral vessels; sample_anatomy hyperinflated
    for _ in range(geo.integers(0, 3)):  # bullae: avascular lucencies with a hairline wall, upper zones
        d = c.distance(c.lung_point(geo, _side(geo), (0.4, 0.9), (0.05, 0.35)), geo.uniform(0.03, 0.06))
        c.vessel_gain *= d > 1
        c.air += 0.05 * c.tissue * ((d < 1) & c.field)
        c.extra += 0.8 * on((np.abs(d - 1) < 0.06) & c.field)
    return c.field.copy()


def _fibrosis(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    zone = smoothstep((c.fx - 0.4) / 0.25) * smoothstep((c.fv - 0.4) / 0.25) * c.field
    net = noise(rng, c.size, max(8, c.size // 8)) - 0.5 * noise(rng, c.size, 6)
    reticulation = np.clip(1 - np.abs(net) / 0.35, 0, 1)  # the zero crossings of the field: a net of lines
    _opacify(c, 0.3 * zone)
    c.extra += 5.0 * reticulation * zone
    return zone > 0.5


def _pleural_thickening(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    side, thick = _side(geo), max(geo.uniform(0.012, 0.028), 1.5 / c.size)
    if geo.random() < 0.3:  # apical cap
        band = c.fv < geo.uniform(0.08, 0.14)
    else:  # along the lateral chest wall
        start = geo.uniform(0.2, 0.6)
        band = (c.lateral - c.lat < thick) & (c.fv > start) & (c.fv < start + geo.uniform(0.2, 0.4))
    band = band & c.field & (c.side == side)
    _opacify(c, on(band))
    c.extra += 1.5 * on(band)
    return band


def _hernia(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    radius = geo.uniform(0.035, 0.055)
    centre = (c.a.cx + geo.uniform(0.0, 0.04), c.a.dome + 0.02 - 0.7 * radius)
    d = c.distance(centre, radius)
    inside = (d < 1) & c.body
    fluid = c.v > centre[1] - 0.2 * radius  # below the air-fluid level
    c.extra += (8.0 * on(fluid) - 5.0) * inside + 1.5 * on(np.abs(d - 1) < 0.08)
    return inside


def _covid(c: Chest, geo: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    wobble = 0.12 * noise(rng, c.size, 7)
    zone = smoothstep((c.fx - 0.15 + wobble) / 0.6) * smoothstep((c.fv - 0.1 - wobble) / 0.6)
    region = zone * (0.45 + 0.55 * smoothstep((noise(rng, c.size, 9) + 1) / 2)) * c.field
    _opacify(c, 0.6 * region, vessels_kept=0.8)  # ground glass: vessels stay visible
    return region > 0.3


FINDINGS = {  # applied in this order: diffuse and airspace disease first, pleura and lumps over them
    "Emphysema": _emphysema, "Fibrosis": _fibrosis, "Edema": _edema, "COVID-19": _covid,
    "Infiltration": _infiltration, "Pneumonia": _pneumonia, "Consolidation": _consolidation,
    "Atelectasis": _atelectasis, "Mass": _mass, "Nodule": _nodule, "Effusion": _effusion,
    "Pleural_Thickening": _pleural_thickening, "Pneumothorax": _pneumothorax, "Cardiomegaly": _cardiomegaly,
    "Hernia": _hernia,
}  # fmt: skip
IN_BODY = ("Cardiomegaly", "Hernia")  # the other findings' masks lie in the lung fields
