"""B-mode-like image formation: tissue, speckle, field of view, nodules, burned-in text.

Everything expensive is done once per patient (:class:`PatientScene`: a periodic tissue
field wider than the frame, its speckle, the field-of-view index maps); a frame is then a
gather from those fields at the probe's position, fresh speckle mixed in, the visible
nodules added in small windows, and log compression to 8 bits. Intensities are summed in
dB, which is what log compression makes of the physical product of echogenicity,
attenuation and speckle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from usv_ray.config import SynthConfig
from usv_ray.synth.plan import (
    TEXT_BAND,
    Fov,
    Nodule,
    NoduleTrack,
    Patient,
    Study,
    Video,
    core_radius,
    sweep_progress,
    video_tracks,
)

FIELD_WIDTHS = 4  # the tissue field is this many frame widths wide (and wraps around)
DYNAMIC_RANGE_DB = 45.0  # dB mapped onto the 0..255 gray scale
GAIN = 170.0  # gray level of 0 dB (mean Rayleigh speckle sits about 2.5 dB lower)
# Speckle decorrelates as the plane moves through the tissue: the phase (radians) by which
# the speckle turns from one fixed pattern to an independent one, per frame. Slow, because
# fresh noise in every frame costs the H.264 encoder several times the render time.
SPECKLE_TURN_PER_FRAME = 0.05
OUTSIDE_DB = -200.0  # outside the view: far below black


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]
) -> np.ndarray:
    """Gaussian-filtered white noise, periodic in both axes, unit variance, float32."""
    white = rng.standard_normal(shape)  # (R, C)
    fy = np.fft.fftfreq(shape[0])[:, None]  # (R, 1)
    fx = np.fft.rfftfreq(shape[1])[None, :]  # (1, C//2+1)
    kernel = np.exp(-2 * np.pi**2 * ((fy * sigma[0]) ** 2 + (fx * sigma[1]) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=shape)  # (R, C)
    return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)


def _smooth_line(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A periodic smooth 1-D curve, unit variance, ``(n,)``."""
    return smooth_noise(rng, (1, n), (0.0, sigma))[0]


def tissue_field(rng: np.random.Generator, depth: int, field_width: int) -> np.ndarray:
    """Echogenicity (dB) of a breast cross-section, ``(depth, field_width)`` float32.

    Layers from the skin down: skin, subcutaneous fat lobules with bright septa, the
    glandular layer (brighter, mottled, with fat islands), retromammary fat, striated
    pectoral muscle, chest wall; plus a few Cooper's-ligament-like bright curved lines
    and depth attenuation. It wraps around laterally so any probe position can be sampled.
    """
    rows = np.arange(depth, dtype=np.float32)[:, None] / depth  # (D, 1) depth fraction
    shape = (depth, field_width)

    def boundary(mean: float, wiggle: float, sigma: float) -> np.ndarray:
        return (mean + wiggle * _smooth_line(rng, field_width, sigma))[None, :]  # (1, Wf)

    def soft_below(edge: np.ndarray) -> np.ndarray:
        return np.clip((rows - edge) * depth / 3.0 + 0.5, 0.0, 1.0)  # (D, Wf), 3 px ramp

    skin = boundary(rng.uniform(0.025, 0.04), 0.004, 40)
    fat_end = boundary(rng.uniform(0.16, 0.28), 0.04, 30)
    gland_end = boundary(rng.uniform(0.62, 0.72), 0.05, 40)
    muscle_start = gland_end + boundary(rng.uniform(0.04, 0.07), 0.01, 30)
    muscle_end = muscle_start + boundary(rng.uniform(0.12, 0.18), 0.015, 50)

    # Fat: dark lobules bounded by bright septa at the zero crossings of smooth noise.
    lobules = smooth_noise(rng, shape, (depth * 0.03, depth * 0.05))
    fat = -15.0 + 7.0 * np.exp(-((lobules / 0.12) ** 2))
    # Glandular tissue: bright and mottled, with a few fat islands.
    mottle = smooth_noise(rng, shape, (1.5, 3.0))
    islands = smooth_noise(rng, shape, (depth * 0.035, depth * 0.06))
    gland = -3.5 + 2.5 * mottle
    gland = np.where(islands > 1.1, -13.0 + 2.0 * mottle, gland)
    # Muscle: fibres as roughly horizontal striations.
    period = rng.uniform(4.0, 7.0)
    warp = 3.0 * _smooth_line(rng, field_width, 25)[None, :]
    muscle = -8.0 + 3.0 * np.sin(2 * np.pi * (rows * depth + warp) / period)

    # Blend the layers top-down, each replacing the one above below its (wavy) edge.
    field = np.full(shape, 4.0, dtype=np.float32)  # skin
    for edge, layer in (
        (skin, fat),
        (fat_end, gland),
        (gland_end, -14.0),
        (muscle_start, muscle),
        (muscle_end, -20.0),
    ):
        w = soft_below(edge)
        field = (1 - w) * field + w * layer

    # Cooper's ligaments: thin bright curved lines through the fat and the top of the gland.
    ligaments = smooth_noise(rng, shape, (depth * 0.08, depth * 0.15))
    upper = 1.0 - soft_below(0.5 * (fat_end + gland_end))
    field += 9.0 * np.exp(-((ligaments / 0.05) ** 2)) * upper * soft_below(skin)

    attenuation = rng.uniform(6.0, 14.0)  # dB lost from skin to the bottom, after TGC
    field -= attenuation * rows
    return field.astype(np.float32)


def speckle_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Complex Gaussian speckle ``(2, R, C)`` float32 (real, imaginary), E|z|^2 = 1.

    Its magnitude is Rayleigh distributed. A blur gives grains a little longer laterally
    than axially, as the point spread function of a real beam does.
    """
    return np.stack(
        [smooth_noise(rng, shape, (0.8, 1.4)) * np.float32(math.sqrt(0.5)) for _ in range(2)]
    )


def fov_maps(fov: Fov, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per screen pixel: inside mask, tissue row and tissue column, each ``(H, W)``.

    A convex probe images along radial lines, so its tissue rows are radial distances
    from the skin arc (the layers curve with the fan) and columns are arc lengths.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)  # (H, W) each
    mask = fov.contains(xx, yy)
    if fov.kind == "linear":
        rows = yy - fov.top
        cols = xx
    else:
        r = np.hypot(xx - fov.apex_x, yy - fov.apex_y)
        angle = np.arctan2(xx - fov.apex_x, yy - fov.apex_y)
        rows = r - fov.r0
        cols = width / 2 + angle * 0.5 * (fov.r0 + fov.r1)
    rows = np.clip(np.round(rows), 0, fov.depth - 1).astype(np.int64)
    cols = np.round(cols).astype(np.int64)
    return mask, rows, cols


def screen_gain(fov: Fov, height: int, width: int) -> np.ndarray:
    """Fixed brightness pattern of the probe (dB) ``(H, W)``: beam falloff at fan edges."""
    if fov.kind == "linear":
        xx = np.arange(width, dtype=np.float32)[None, :]
        edge = np.minimum(xx - fov.left, fov.right - 1 - xx) / max(1, fov.right - fov.left)
        return np.broadcast_to(-3.0 * np.exp(-edge / 0.03), (height, width)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.abs(np.arctan2(xx - fov.apex_x, yy - fov.apex_y)) / max(fov.half_angle, 1e-6)
    return (-4.0 * np.clip(angle, 0, 1) ** 6).astype(np.float32)


def text_band(lines: list[str], height: int, width: int) -> np.ndarray:
    """Burned-in scanner text, white on black, top-left: rows ``[0, TEXT_BAND * H)``.

    Drawn large with PIL's default font and scaled down to fit the band, so the text never
    reaches the row where the de-identification crop starts.
    """
    from PIL import Image, ImageDraw, ImageFont

    band = math.floor(TEXT_BAND * height)
    out = np.zeros((band, width), dtype=np.uint8)  # (band, W)
    usable_h, usable_w = band - 3, int(0.9 * width)  # rows 1..band-3: room for codec ringing
    if usable_h < 4:
        return out
    font = ImageFont.load_default(size=32)
    best = None
    for layout in (["   ".join(lines)], lines):  # one line, or one line per item
        canvas = Image.new("L", (2400, 60 * len(layout)), 0)
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(layout):
            draw.text((4, 4 + 40 * i), line, fill=255, font=font)
        bbox = canvas.getbbox()
        if bbox is None:
            continue
        text = canvas.crop(bbox)
        zoom = min(usable_h / text.height, usable_w / text.width)
        if best is None or zoom > best[0]:
            best = (zoom, text)
    if best is None:  # nothing printable
        return out
    zoom, text = best
    size = (max(1, int(text.width * zoom)), max(1, int(text.height * zoom)))
    small = np.asarray(text.resize(size, Image.Resampling.BOX), dtype=np.float32)
    # Re-sharpen the strokes: scanner text is crisp and saturated.
    small = np.clip((small - 40.0) * 1.6, 0, 255).astype(np.uint8)
    out[1 : 1 + small.shape[0], 2 : 2 + small.shape[1]] = small
    return out


@dataclass
class PatientScene:
    """Per-patient precomputed fields; render any of the patient's videos from it."""

    patient: Patient
    cfg: SynthConfig
    tissue: np.ndarray  # (D * Wf, 5) float32: tissue dB, two speckle patterns (re, im)
    field_width: int
    mask: np.ndarray  # (H, W) bool
    fov_pixels: np.ndarray  # (P,) flat indices of the pixels inside the view
    field_row: np.ndarray  # (P,) tissue row * field_width, for wrapping the column
    field_col: np.ndarray  # (P,) tissue column at shift 0
    gain_db: np.ndarray  # (P,) fixed probe brightness pattern

    @classmethod
    def build(cls, patient: Patient, cfg: SynthConfig) -> PatientScene:
        """Precompute the tissue, speckle and field-of-view maps of one patient."""
        rng = np.random.default_rng([*patient.render_seed, 0])
        depth, field_width = patient.fov.depth, FIELD_WIDTHS * cfg.width
        tissue = tissue_field(rng, depth, field_width)  # (D, Wf)
        speckle = speckle_field(rng, (depth, field_width))  # (2, D, Wf)
        fresh = speckle_field(rng, (depth, field_width))  # (2, D, Wf)
        stacked = np.stack([tissue, *speckle, *fresh], axis=-1).reshape(-1, 5)  # (D * Wf, 5)
        mask, rows, cols = fov_maps(patient.fov, cfg.height, cfg.width)
        fov_pixels = np.flatnonzero(mask)  # (P,)
        field_row = rows.ravel()[fov_pixels] * field_width
        field_col = cols.ravel()[fov_pixels]
        gain = screen_gain(patient.fov, cfg.height, cfg.width).ravel()[fov_pixels]
        return cls(
            patient, cfg, np.ascontiguousarray(stacked), field_width, mask, fov_pixels,
            field_row, field_col, gain,
        )  # fmt: skip

    def frame_db(self, shift: int, turn: float) -> np.ndarray:
        """Tissue with speckle (dB) for the probe at lateral ``shift``, ``(H, W)`` float32.

        The speckle is ``cos(turn) z0 + sin(turn) z1`` of two independent complex Gaussian
        patterns: still Rayleigh for any ``turn``, and fully decorrelated at pi / 2.
        """
        cols = self.field_col + shift
        index = self.field_row + cols % self.field_width  # (P,)
        sample = self.tissue[index]  # (P, 5)
        keep, new = np.float32(math.cos(turn)), np.float32(math.sin(turn))
        re = keep * sample[:, 1] + new * sample[:, 3]  # (P,)
        im = keep * sample[:, 2] + new * sample[:, 4]
        db = sample[:, 0] + self.gain_db + 10.0 * np.log10(re * re + im * im + 1e-6)  # (P,)
        out = np.full(self.cfg.height * self.cfg.width, OUTSIDE_DB, dtype=np.float32)
        out[self.fov_pixels] = db
        return out.reshape(self.cfg.height, self.cfg.width)

    def render(self, study: Study, video: Video) -> np.ndarray:
        """All frames of one video, ``(T, H, W)`` uint8."""
        cfg, patient = self.cfg, self.patient
        rng = np.random.default_rng([*patient.render_seed, 1, video_index(patient, video)])
        turn0 = float(rng.uniform(0.0, 2 * np.pi))  # where this video's speckle starts
        tracks = video_tracks(patient, study, video, cfg.height, cfg.width)
        probe = video.q_start + (video.q_end - video.q_start) * sweep_progress(video.n_frames)
        shifts = np.round(probe).astype(np.int64) + video.field_offset  # (T,)
        family, given = patient.name.split("^")
        band = text_band(
            [f"{family.upper()}, {given}", f"ID {patient.patient_id}", study.exam_date.isoformat()],
            cfg.height,
            cfg.width,
        )  # (band, W)
        frames = np.empty((video.n_frames, cfg.height, cfg.width), dtype=np.uint8)  # (T, H, W)
        for t in range(video.n_frames):
            db = self.frame_db(int(shifts[t]), turn0 + SPECKLE_TURN_PER_FRAME * t)  # (H, W)
            for nodule in patient.nodules:
                draw_nodule(db, nodule, tracks[nodule.nodule_id], t)
            gray = np.clip(GAIN + (255.0 / DYNAMIC_RANGE_DB) * db, 0.0, 255.0)  # (H, W)
            frame = gray.astype(np.uint8)
            frame[~self.mask] = 0
            frame[: band.shape[0]] = band
            frames[t] = frame
        return frames


def video_index(patient: Patient, video: Video) -> int:
    """Position of ``video`` among all of the patient's videos (seeds its speckle)."""
    stems = [v.stem for s in patient.studies for v in s.videos]
    return stems.index(video.stem)


def draw_nodule(db: np.ndarray, nodule: Nodule, track: NoduleTrack, t: int) -> None:
    """Add one nodule's cross-section in frame ``t`` to the dB image ``db`` (in place).

    The outline is the plan's core margin (so boxes match) plus spicules that exist at
    some slices only; inside: hypoechoic with the nodule's own echo texture; around it an
    echogenic halo (malignant); below it an acoustic shadow or enhancement. How strongly
    the malignant cues show depends on the view angle, so some frames look benign.
    """
    scale = float(track.scale[t])
    if scale <= 0.05:
        return
    height, width = db.shape
    cx, cy = float(track.cx[t]), float(track.cy[t])
    hw, hh = max(float(track.half_w[t]), 1.0), max(float(track.half_h[t]), 1.0)
    elev = float(track.elev[t])
    across = abs(math.sin(float(track.view_angle[t])))  # 1: looking across the long axis
    reach = 1.0 + max(nodule.spicule_length, default=0.0) + 0.6  # normalised radius
    x0, x1 = max(0, int(cx - reach * hw) - 1), min(width, int(cx + reach * hw) + 2)
    y0, y1 = max(0, int(cy - reach * hh) - 1), min(height, int(cy + reach * hh) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / hw  # (1, w)
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / hh  # (h, 1)
    rho = np.sqrt(dx * dx + dy * dy)  # (h, w)
    phi = np.arctan2(dy, dx)  # (h, w)
    margin = core_radius(nodule, phi, elev).astype(np.float32)  # (h, w)
    spikes = np.zeros_like(margin)
    for angle, length, where in zip(
        nodule.spicule_angle, nodule.spicule_length, nodule.spicule_elev, strict=True
    ):
        # A spicule is a thin 3-D strand: seen only in slices near it, best across the axis.
        seen = math.exp(-(((elev - where) / 0.45) ** 2)) * (0.25 + 0.75 * across)
        if seen < 0.05:
            continue
        gap = np.angle(np.exp(1j * (phi - angle)))  # wrapped angular distance
        spikes += length * seen * np.exp(-((gap / 0.09) ** 2)).astype(np.float32)
    outline = margin + spikes
    inside = np.clip((outline - rho) / nodule.edge_width + 0.5, 0.0, 1.0)  # (h, w)

    texture = np.zeros_like(rho)
    for (fx, fy, fe), phase in zip(nodule.texture_freq, nodule.texture_phase, strict=True):
        texture += np.cos(fx * dx + fy * dy + (fe * elev + phase)).astype(np.float32)
    texture *= 1.0 / max(1, len(nodule.texture_freq))
    # Small sections are partly volume-averaged with the tissue around them: less dark.
    contrast = min(1.0, 0.4 + scale)
    offset = inside * contrast * (nodule.echo_db + nodule.texture_db * texture)
    if nodule.halo_db:
        ring = np.exp(-(((rho - outline) / 0.22) ** 2)) * (rho > outline)
        offset += nodule.halo_db * contrast * ring
    for px, py, pe in nodule.calcs:  # microcalcifications: bright specks in some slices
        if abs(pe - elev) < 0.2:
            d2 = ((dx - px) * hw) ** 2 + ((dy - py) * hh) ** 2  # squared pixel distance
            offset += 28.0 * np.exp(-d2 / 0.8)
    db[y0:y1, x0:x1] += offset

    # Posterior features: a band under the nodule down to the bottom of the frame.
    strength = nodule.posterior_db * scale
    if nodule.posterior_db < 0:
        strength *= 0.5 + 0.5 * across
    if abs(strength) < 0.3:
        return
    px0, px1 = max(0, int(cx - 0.9 * hw)), min(width, int(cx + 0.9 * hw) + 1)
    top = int(cy + 0.4 * hh)
    if px0 >= px1 or top >= height:
        return
    cols = (np.arange(px0, px1, dtype=np.float32) - cx) / (0.9 * hw)  # (w,)
    profile = np.cos(np.clip(cols, -1, 1) * np.pi / 2) ** 2  # (w,)
    rows = (np.arange(top, height, dtype=np.float32) - (cy + 0.4 * hh)) / (0.6 * hh)  # (h,)
    ramp = np.clip(rows, 0.0, 1.0)  # (h,)
    db[top:height, px0:px1] += strength * ramp[:, None] * profile[None, :]
