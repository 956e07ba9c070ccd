"""One image on its pixel grid (``Chest``): the fields of attenuation that make a normal chest radiograph.

Every structure is a line integral of attenuation along the x-ray, in centimetres of water, over anatomy
coordinates ``(u, v)`` (``anatomy``); the pixel grid samples them through a per-image rotation, scale and shift
(positioning).  Soft tissue is a body of elliptical cross-section (neck, shoulders, chest wall); the lungs replace
tissue by air, most in the middle of each hemithorax, thinning to the chest wall, the mediastinum, the apex and the
diaphragm domes (the right dome higher, sharp costophrenic angles laterally); the heart, whose left border (the left
ventricle) bulges most low down and whose right border (the right atrium) bulges at mid-height, displaces most of the
lung in front of and behind it; the trachea, the main bronchi and a gastric bubble under the left dome are air.
Bones add attenuation: a spine of vertebrae with pedicles and discs, ten curved posterior ribs and fainter anterior
ribs per side with bright cortices, clavicles, scapulae (over the lungs on AP films) and humeral heads; lung vessels
are a branching tree from each hilum, fading to the periphery; women have breast shadows over the lung bases.
The findings (``findings``) edit these fields before ``rendering.render`` sums them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from flexheads.data.synthetic_cxr.anatomy import Anatomy, vessel_tree
from flexheads.data.synthetic_cxr.cohort import Study


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, ``3x² - 2x³`` between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def on(mask: np.ndarray) -> np.ndarray:
    """A bool mask as float32 (a bool array times a Python float would be float64)."""
    return mask.astype(np.float32)


def noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field ``(size, size)`` of about unit variance with ``cells`` blobs across (bicubic)."""
    field = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32))
    return np.asarray(field.resize((size, size), Image.Resampling.BICUBIC)) * np.float32(1.6)


class Chest:
    """One image on its pixel grid: anatomy coordinates and the fields the findings edit.

    ``air`` (cm of aerated lung along the ray, subtracted), ``extra`` (cm of added attenuation) and ``vessel_gain``
    (visibility of lung markings) start from the normal anatomy; ``render`` sums them with tissue and bone.  All
    fields are float32 ``(S, S)``; costly ufuncs (pow, log, mod, hypot, where) are avoided on the full grid.
    """

    def __init__(self, anatomy: Anatomy, size: int, rng: np.random.Generator) -> None:
        self.a, self.size = anatomy, size
        angle, scale = np.deg2rad(rng.normal(0, 2.0)), 1 + rng.normal(0, 0.04)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        self.linear = np.array([[cos, -sin], [sin, cos]])  # pixel (u, v) → anatomy (u, v), about the centre
        self.offset = 0.5 - self.linear @ [0.5, 0.5] + rng.normal(0, 0.02, 2)
        pix = (np.arange(size, dtype=np.float32) + 0.5) / size
        pu, pv = np.meshgrid(pix, pix)
        l, o = self.linear.astype(np.float32), self.offset.astype(np.float32)
        self.u, self.v = l[0, 0] * pu + l[0, 1] * pv + o[0], l[1, 0] * pu + l[1, 1] * pv + o[1]
        self.left = self.u >= anatomy.cx  # the patient's left, on the image right
        self.side = on(self.left) * 2 - 1
        self.lat = np.abs(self.u - anatomy.cx)
        self.tissue, self.body = self._body()
        self.lateral = self.lateral_at(self.v)
        self.medial = self.medial_at(self.v, self.side)
        self.diaphragm = self.dome_at(self.lat, self.side)
        self.field = (self.lat > self.medial) & (self.lat < self.lateral) & (self.v < self.diaphragm)
        self.fx = np.clip((self.lat - self.medial) / np.maximum(self.lateral - self.medial, 1e-3), 0, 1)
        self.fv = np.clip((self.v - anatomy.apex) / (self.diaphragm - anatomy.apex), 0, 1)
        self.heart_region, self.heart = self._heart()
        self.air = self._air()
        self.extra = np.zeros_like(self.u)
        self.vessel_gain = np.ones_like(self.u)

    # geometry: on arrays, or on scalars for placing lesions
    def lateral_at(self, v: np.ndarray) -> np.ndarray:
        """Inner ribcage half-width at height ``v``: a rounded apex cap, widening to ``ribcage`` at the bases."""
        a = self.a
        cap = np.clip((v - a.apex) / 0.09, 0, 1)
        widen = np.clip((v - a.apex) / (a.dome + a.dome_depth - a.apex), 0, 1)
        return a.ribcage * (0.62 + 0.38 * widen) * np.sqrt(cap * (2 - cap))

    def medial_at(self, v: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Mediastinal half-width: narrow above the clavicles, wider below, the aortic knob on the left."""
        a = self.a
        knob = 0.022 * np.exp(-(((v - 0.29) / 0.03) ** 2)) * (side > 0)
        return a.mediastinum - 0.018 * np.clip((0.25 - v) / 0.08, 0, 1) + knob

    def dome_at(self, lat: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Height of the diaphragm: its peak at 45% of the ribcage, the costophrenic angle at the ribcage, the
        cardiophrenic angle medially; the left dome (side +1) 0.025 lower."""
        a = self.a
        peak = 0.45 * a.ribcage
        outer = np.clip(lat - peak, 0, None) / (a.ribcage - peak)
        inner = np.clip(peak - lat, 0, None) / peak
        return a.dome + 0.0125 * (side + 1) + a.dome_depth * (outer * outer + 0.3 * inner * inner)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Anatomy coordinates ``(..., 2)`` → pixel coordinates (for drawing with PIL)."""
        return (np.asarray(points) - self.offset) @ np.linalg.inv(self.linear).T * self.size

    def lung_point(self, rng: np.random.Generator, side: float, fx: tuple[float, float],
                   fv: tuple[float, float]) -> tuple[float, float]:
        """A point of a lung at fractions ``fx`` across (mediastinum → chest wall) and ``fv`` down (apex → dome)."""
        a = self.a
        v = a.apex + rng.uniform(*fv) * (a.dome + 0.0125 * (side + 1) - a.apex)
        medial = self.medial_at(v, side)
        lat = medial + rng.uniform(*fx) * (self.lateral_at(v) - medial)
        return a.cx + side * float(lat), float(v)

    def distance(self, centre: tuple[float, float], radius: float) -> np.ndarray:
        """Distance from ``centre`` in units of ``radius``."""
        du, dv = self.u - centre[0], self.v - centre[1]
        return np.sqrt(du * du + dv * dv) / radius

    # fields
    def _body(self) -> tuple[np.ndarray, np.ndarray]:
        """Soft-tissue thickness (cm) of the neck, the sloping shoulders and the chest, and the body outline."""
        a, v, lat = self.a, self.v, self.lat
        half = np.interp(v, [0.0, 0.04, 0.17, 0.35, 1.0], [0.09, 0.11, a.body + 0.04, a.body, a.body * 0.95])
        half = half.astype(np.float32)
        depth = 21.0 * (0.55 + 0.45 * smoothstep((v - 0.05) / 0.2))
        r = lat / half
        return depth * np.sqrt(np.sqrt(np.clip(1 - r * r, 0, 1))), r < 1

    def _heart(self) -> tuple[np.ndarray, np.ndarray]:
        """The heart: its region (between the hilum and the domes, inside its borders) and its occupancy in [0, 1],
        edges sharp against the lung. The left border (the left ventricle) bulges most low down, near the apex on
        the left dome; the right border (the right atrium) bulges mid-height and meets the right dome."""
        a, v = self.a, self.v
        t_left = np.clip((v - 0.36) / (a.dome + 0.045 - 0.36), 0, 1)
        t_right = np.clip((v - 0.43) / (a.dome + 0.01 - 0.43), 0, 1)
        left = np.sin(np.minimum(t_left / 0.8, 1) * (np.pi / 2))  # from the concave "waist" under the knob
        right = np.sqrt(np.clip(np.sin(np.pi * t_right), 0, 1))
        border = self.medial_at(v, self.side) + np.where(self.left, a.heart_left * left, a.heart_right * right)
        occupancy = smoothstep((border - self.lat) / 0.008) * (v > 0.36)
        return occupancy > 0.5, occupancy

    def _air(self) -> np.ndarray:
        """Air along the ray: ``aeration`` of the body depth mid-lung, thinning toward every lung border, less over
        the hila and behind the heart."""
        a = self.a
        across = np.sqrt(np.sqrt(np.clip(4 * self.fx * (1 - self.fx), 0, 1)))
        top = np.sqrt(np.clip((self.v - a.apex) / 0.05, 0, 1))
        bottom = np.sqrt(np.clip((self.diaphragm - self.v) / 0.02, 0, 1))
        dx, dv = (self.lat - self.medial - 0.02) / 0.025, (self.v - 0.41) / 0.05
        hilum = np.exp(-(dx * dx + dv * dv))
        air = (a.aeration * self.tissue) * across * top * bottom * self.field
        return air * (1 - 0.8 * self.heart) * (1 - 0.35 * hilum)

    def bones(self, view: str) -> np.ndarray:
        """Spine, ribs, clavicles, scapulae and humeral heads (cm of water-equivalent attenuation)."""
        a, v, lat = self.a, self.v, self.lat
        # Spine: vertebral bodies between darker discs, with paired pedicles; faint through the mediastinum.
        level = (v - 0.02) / 0.046
        phase = level - np.floor(level)
        dp, dq = (lat - 0.021) / 0.006, (phase - 0.45) / 0.18
        density = (1.0 + 0.8 * on(phase > 0.12) + 1.2 * on(dp * dp + dq * dq < 1)) * (lat < 0.033)
        # Posterior ribs: one arched shape shifted down, the spacing growing with depth (rib k starts at
        # k + g k²/2 spacings), read off the inverse map; only faintly below the domes.
        t = lat / a.ribcage
        tc = np.clip(t, 0, 1)
        arch = (0.09 * t * t * t - 0.03 * np.sin(2.7 * tc)) * (1 + 0.8 * (v - a.apex))
        y = np.clip((v - arch - a.apex + 0.035) / 0.05, 0, None)
        s = (np.sqrt(1 + 0.3 * y) - 1) / 0.15
        d = (s - np.floor(s)) / 0.48  # across one rib: 0 at its upper cortex, 1 at its lower one
        posterior = (d < 1) & (s > 0) & (s < 10) & (t > 0.06) & (t < 1.03)
        cortex = 1 + 0.5 * on((d < 0.15) | (d > 0.85))
        below = np.clip((v - self.diaphragm) / 0.08, 0, 1)
        density += cortex * smoothstep((t - 0.06) / 0.1) * (1 - 0.7 * below) * posterior
        # Anterior ribs: fainter, running down and in from the chest wall, invisible medially (cartilage).
        inward = np.clip(1 - t, 0, 1)
        ya = (v - 0.16 * inward * np.sqrt(inward) - a.apex - 0.01) / 0.062
        anterior = (ya > 0) & (ya < 7) & (ya - np.floor(ya) < 0.32) & (t < 1.0)
        density += 0.6 * smoothstep((t - 0.3) / 0.25) * anterior
        # Clavicles: gently S-shaped, rising laterally from the sternal notch.
        clavicle = a.apex + 0.025 - 0.05 * lat / 0.36 + 0.012 * np.sin(17.45 * lat)
        dc = np.abs(v - clavicle) / 0.012
        density += (1.6 + dc * dc * dc * dc) * ((dc < 1) & (lat > 0.025) & (lat < 0.37))
        # Scapulae: over the lateral upper lungs on AP films, mostly rotated out of them on PA films.
        border = (0.31 if view == "PA" else 0.23) - 0.06 * np.clip((v - 0.15) / 0.3, 0, 1)
        scapula = (lat > border) & (v > 0.13) & (v < 0.46 - 2 * (lat - border)) & (lat < a.body)
        density += (1.0 + 0.8 * on(lat - border < 0.006)) * scapula
        # Humeral heads at the shoulders.
        rh = self.distance((a.cx + a.body + 0.035, 0.17), 0.065)
        rh = np.minimum(rh, self.distance((a.cx - a.body - 0.035, 0.17), 0.065))
        density += (3.0 + 1.5 * rh * rh * rh) * (rh < 1)
        return a.bone * density

    def vessels(self, rng: np.random.Generator) -> np.ndarray:
        """Pulmonary vessels: a branching tree from each hilum, drawn with PIL and blurred, fading toward the chest
        wall and visible only where there is lung (``rng`` fixes the tree: one per patient)."""
        canvas = Image.new("F", (self.size, self.size), 0.0)
        draw = ImageDraw.Draw(canvas)
        scale = self.size / 256
        for start, end, width, density in vessel_tree(rng, self.a):
            w = max(1, round(width * scale))
            for (x0, y0), (x1, y1) in self.to_pixels(np.stack([start, end], 1)).tolist():
                draw.line([(x0, y0), (x1, y1)], fill=density, width=w)
        vessels = ndimage.gaussian_filter(np.asarray(canvas), 0.7 * scale, mode="nearest")
        return vessels * np.clip(1.2 - self.fx, 0, 1) * np.clip(self.air / 4, 0, 1)

    def soft_tissue(self, study: Study) -> np.ndarray:
        """Breast shadows over the lung bases of adult women, densest toward their sharp lower contour."""
        if study.sex != "F" or study.age < 15:
            return np.zeros_like(self.u)
        centre = self.a.dome + 0.02
        du, dv = (self.lat - 0.24) / 0.17, (self.v - centre) / 0.13
        r = np.sqrt(du * du + dv * dv)
        return 1.5 * smoothstep((1 - r) / 0.15) * np.clip((self.v - centre + 0.12) / 0.16, 0, 1)

    def air_structures(self, gastric: bool) -> np.ndarray:
        """Air outside the lungs (cm): trachea and main bronchi, and a gastric bubble under the left dome."""
        a, u, v = self.a, self.u, self.v
        air = 3.0 * on((np.abs(u - a.cx) < 0.011) & (v > 0.02) & (v < 0.34))
        spread = 0.06 * np.clip((v - 0.34) / 0.06, 0, 1)
        air += 2.5 * on((np.abs(self.lat - spread) < 0.008) & (v >= 0.34) & (v < 0.40))
        if gastric:
            gx, gy = a.cx + 0.13, float(self.dome_at(0.13, 1.0)) + 0.035
            du, dv = (u - gx) / 0.04, (v - gy) / 0.025
            air += 3.0 * on((du * du + dv * dv < 1) & (v < gy + 0.006))
        return air
