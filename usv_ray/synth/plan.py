"""The plan of a synthetic archive: patients, studies, videos and nodules, drawn from the seed.

Planning is kept apart from rendering: everything that is ground truth (who is who, which
nodule each video shows, its box in every frame, the video's label) is a cheap pure
function of the config, so it can be computed and tested without drawing a pixel.

Geometry, in pixels of the scanner frame:

* A patient's breast is a plane of world positions ``(x, e)``; each nodule is a 3-D object
  at a world position and a depth below the skin, with horizontal semi-axes ``a`` (along
  its own axis angle) and ``c`` (across it), and a vertical semi-axis ``b``.
* A video is a probe sweep. The image plane has an orientation ``theta``; its normal
  coordinate ``v`` moves from ``v_start`` to ``v_end`` (the plane slices through nodules,
  so their cross-sections grow and shrink) while the probe also slides along its own plane
  from ``q_start`` to ``q_end`` (tissue and nodules translate across the screen).

One idea in one file, past 500 lines on purpose: the geometry (a nodule's cross-section
and box in every frame of a sweep) and the draws that place it (patients, exams, nodules,
tonight's follow-ups) are the ground truth together, and read as one derivation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np

from usv_ray.boxes import box_iou
from usv_ray.config import SynthConfig

S_MIN = 0.3  # a nodule is annotated once its cross-section is this fraction of its widest
IOU_NEW_KEYFRAME = 0.7  # a new key frame when the box overlaps the last key box less
TEXT_BAND = 0.10  # the burned-in text stays in rows [0, TEXT_BAND * H)
FOV_BELOW = 0.12  # the field of view starts below this fraction of the height
FOV_TOP = 0.15  # where the field of view actually starts: a margin for codec ringing

# The night batch draws from streams of its own, SeedSequence([seed, tag]) with a nonzero
# tag, never from SeedSequence(seed) or its children. NumPy assembles a child's entropy as
# the seed's words, zero padding to the pool size, then the spawn key ([seed, 0, 0, 0, i]),
# so a nonzero word right after the seed keeps these streams apart from every archive
# stream: the archive's draws are exactly what they were without a night batch.
FOLLOWUP_STREAM = 0x666F6C6C  # "foll": who comes back tonight, and each follow-up exam
NEW_PATIENT_STREAM = 0x6E657770  # "newp": tonight's new patients

_CONSONANTS = "ghklmnprstvyz"  # no hex letters: a hex file name can never spell a name
_VOWELS = "aeiou"


@dataclass(frozen=True)
class Fov:
    """The probe's field of view on the screen: a linear rectangle or a convex fan.

    A fan is the ring sector ``r0 <= r < r1``, ``|angle| <= half_angle`` around a virtual
    apex above the frame, so its top and bottom are concentric arcs.
    """

    kind: str  # "linear" or "sector"
    top: int  # the highest row of the field of view
    centre_top: float  # the row of the skin line under the centre column
    depth: int  # rows of tissue imaged under the centre column
    left: int  # linear: the first and last+1 columns
    right: int
    apex_x: float = 0.0  # sector only
    apex_y: float = 0.0
    r0: float = 0.0
    r1: float = 0.0
    half_angle: float = 0.0

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether the points ``(x, y)`` (any matching shapes) lie inside the view."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.kind == "linear":
            return (
                (x >= self.left) & (x < self.right) & (y >= self.top) & (y < self.top + self.depth)
            )
        r = np.hypot(x - self.apex_x, y - self.apex_y)
        angle = np.arctan2(x - self.apex_x, y - self.apex_y)
        return (r >= self.r0) & (r < self.r1) & (np.abs(angle) <= self.half_angle)


@dataclass(frozen=True)
class Nodule:
    """The persistent identity of one nodule: the same in every video and study."""

    nodule_id: str  # "n1", "n2", ... unique within the patient
    malignant: bool
    world_x: float  # position in the breast plane, pixels
    world_e: float
    depth_frac: float  # centre depth as a fraction of the imaged depth
    radius: float  # pixels at the first study
    a: float  # semi-axes as multiples of radius: horizontal along axis_angle...
    b: float  # ...vertical...
    c: float  # ...and horizontal across axis_angle
    axis_angle: float  # radians
    profile: float  # half-height ~ s**profile at cross-section scale s (< 1: pointed, tall)
    lobe_amp: tuple[float, ...]  # margin lobulation: amplitude of harmonic k = 2, 3, ...
    lobe_phase: tuple[float, ...]
    lobe_drift: tuple[float, ...]  # phase change across the nodule's thickness
    spicule_angle: tuple[float, ...]  # spicules: direction, length and where in thickness
    spicule_length: tuple[float, ...]
    spicule_elev: tuple[float, ...]
    edge_width: float  # margin blur (normalised radius units): sharp = circumscribed
    echo_db: float  # mean darkening inside, dB (negative: hypoechoic)
    texture_freq: tuple[tuple[float, float, float], ...]  # internal echo texture
    texture_phase: tuple[float, ...]
    texture_db: float
    halo_db: float  # echogenic rim just outside the margin
    posterior_db: float  # below the nodule: < 0 acoustic shadow, > 0 enhancement
    calcs: tuple[tuple[float, float, float], ...]  # microcalcifications, normalised (x, y, e)
    growth_per_year: float  # relative growth of the radius
    tissue_anchor: int  # tissue field column around it: the same surroundings in every video


@dataclass(frozen=True)
class Video:
    """One planned video: a probe sweep over the breast."""

    stem: str  # anonymous, deterministic file stem
    fmt: str  # "mp4" or "dcm"
    n_frames: int
    theta: float  # image plane orientation, radians
    v_start: float  # plane normal coordinate at the first and last frame
    v_end: float
    q_start: float  # probe position along the plane at the first and last frame
    q_end: float
    field_offset: int  # column of the patient's tissue field under the probe at q = 0
    numeric_label: bool  # write the label as "0"/"1" instead of a word
    omit_patient_id: bool  # DICOM only: leave the manifest's patient_id empty
    annotated: bool = True  # the manifest row gives its annotations file


@dataclass(frozen=True)
class Study:
    """One exam of a patient."""

    study_id: str
    exam_date: date
    years: float  # since the patient's first exam (drives nodule growth)
    videos: tuple[Video, ...]


@dataclass(frozen=True)
class Patient:
    """One patient: identity, probe, nodules and exams."""

    index: int
    patient_id: str  # "MRN" + 7 digits
    name: str  # DICOM style "FAMILY^GIVEN"
    fov: Fov
    nodules: tuple[Nodule, ...]
    studies: tuple[Study, ...]
    render_seed: tuple[int, ...]  # entropy for the pixels (speckle, tissue), per patient


@dataclass(frozen=True)
class NightExam:
    """One exam of tonight's batch: the last study of ``patient``."""

    patient: Patient  # the whole patient: its archive exams, if any, then tonight's
    follow_up: bool  # an archive patient's follow-up, or a new patient's first exam

    @property
    def study(self) -> Study:
        """Tonight's exam."""
        return self.patient.studies[-1]


@dataclass(frozen=True)
class NoduleTrack:
    """Where one nodule is in every frame of one video. All arrays are ``(T,)``."""

    scale: np.ndarray  # cross-section scale s in [0, 1]; 0: the plane misses it
    elev: np.ndarray  # signed distance of the plane from the centre / half-thickness
    cx: np.ndarray  # screen centre, pixels
    cy: np.ndarray
    half_w: np.ndarray  # semi-axes of the cross-section on screen, pixels
    half_h: np.ndarray
    view_angle: np.ndarray  # plane orientation relative to the nodule's axis, radians
    boxes: np.ndarray  # (T, 4) integer [x0, y0, x1, y1] of the core (no spicules)
    visible: np.ndarray  # bool: annotated in this frame


def _name(rng: np.random.Generator) -> str:
    """A fake "FAMILY^GIVEN" name from random syllables."""

    def word(n_syllables: int) -> str:
        parts = [
            rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(n_syllables)
        ]
        return "".join(parts).capitalize()

    return f"{word(int(rng.integers(2, 4)))}^{word(int(rng.integers(2, 4)))}"


def _fov(rng: np.random.Generator, height: int, width: int) -> Fov:
    """A linear or convex field of view below ``FOV_TOP * height``."""
    top = math.ceil(FOV_TOP * height)
    bottom = height - 2 - int(rng.integers(0, max(1, height // 40)))
    if rng.random() < 0.5:
        margin = round(width * rng.uniform(0.04, 0.1))
        return Fov("linear", top, float(top), bottom - top, margin, width - margin)
    # Convex probe: the apex sits above the frame; the arcs' ends are the highest pixels.
    r0 = width * rng.uniform(0.25, 0.45)
    half = math.radians(rng.uniform(28.0, 38.0))
    for _ in range(50):  # shrink the fan until its bottom corners fit in the frame
        apex_y = top - r0 * math.cos(half)
        r1 = bottom - apex_y
        if r1 * math.sin(half) <= 0.48 * width:
            break
        half *= 0.97
    apex_y = top - r0 * math.cos(half)
    r1 = bottom - apex_y
    centre_top = apex_y + r0
    x_half = math.ceil(r1 * math.sin(half))
    return Fov(
        "sector",
        top,
        centre_top,
        int(r1 - r0),
        width // 2 - x_half,
        width // 2 + x_half,
        apex_x=width / 2,
        apex_y=apex_y,
        r0=r0,
        r1=r1,
        half_angle=half,
    )


def _nodule(rng: np.random.Generator, index: int, malignant: bool, height: int) -> Nodule:
    """Draw the identity of one nodule; BI-RADS cues set by ``malignant``."""
    radius = height * rng.uniform(0.055, 0.11)
    n_lobes = 5
    if malignant:
        # Taller than wide across its axis (c < b), irregular, spiculated, shadowing.
        b, a, c = 1.0, rng.uniform(1.2, 1.6), rng.uniform(0.65, 0.9)
        profile = rng.uniform(0.45, 0.7)
        lobe_amp = rng.uniform(0.04, 0.12, n_lobes)
        n_spicules = int(rng.integers(5, 12))
        edge_width = rng.uniform(0.1, 0.18)
        echo_db = rng.uniform(-24.0, -17.0)
        halo_db = rng.uniform(3.0, 7.0)
        posterior_db = -rng.uniform(8.0, 16.0)
        calcs = tuple(
            (float(x), float(y), float(e))
            for x, y, e in rng.uniform(-0.6, 0.6, (int(rng.integers(0, 7)), 3))
        )
        growth = rng.uniform(0.08, 0.25)
    else:
        # Oval, wider than tall in every plane, circumscribed, maybe posterior enhancement.
        b, a, c = 1.0, rng.uniform(1.5, 2.0), rng.uniform(1.3, 1.6)
        profile = rng.uniform(0.9, 1.1)
        lobe_amp = rng.uniform(0.0, 0.025, n_lobes) * (rng.random(n_lobes) < 0.5)
        n_spicules = 0
        edge_width = rng.uniform(0.03, 0.06)
        echo_db = rng.uniform(-22.0, -13.0)
        halo_db = 0.0
        posterior_db = rng.uniform(0.0, 5.0)
        calcs = ()
        growth = rng.uniform(0.0, 0.04)
    n_tex = 3
    return Nodule(
        nodule_id=f"n{index + 1}",
        malignant=malignant,
        world_x=0.0,
        world_e=0.0,
        depth_frac=rng.uniform(0.32, 0.58),
        radius=radius,
        a=a,
        b=b,
        c=c,
        axis_angle=rng.uniform(0.0, math.pi),
        profile=profile,
        lobe_amp=tuple(float(v) for v in lobe_amp),
        lobe_phase=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, n_lobes)),
        lobe_drift=tuple(float(v) for v in rng.uniform(-2.0, 2.0, n_lobes)),
        spicule_angle=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, n_spicules)),
        spicule_length=tuple(float(v) for v in rng.uniform(0.25, 0.7, n_spicules)),
        spicule_elev=tuple(float(v) for v in rng.uniform(-0.9, 0.9, n_spicules)),
        edge_width=edge_width,
        echo_db=echo_db,
        texture_freq=tuple(
            (float(fx), float(fy), float(fe)) for fx, fy, fe in rng.uniform(-9.0, 9.0, (n_tex, 3))
        ),
        texture_phase=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, n_tex)),
        texture_db=rng.uniform(1.5, 5.0),
        halo_db=halo_db,
        posterior_db=posterior_db,
        calcs=calcs,
        growth_per_year=growth,
        tissue_anchor=int(rng.integers(0, 2**20)),
    )


def _place(rng: np.random.Generator, nodules: list[Nodule], width: int) -> list[Nodule]:
    """Scatter nodules over the breast plane, well apart from each other."""
    placed: list[Nodule] = []
    span = 1.2 * width
    for nodule in nodules:
        for _ in range(100):
            x, e = rng.uniform(-span, span, 2)
            if all(math.hypot(x - p.world_x, e - p.world_e) > 0.5 * width for p in placed):
                break
        placed.append(replace(nodule, world_x=float(x), world_e=float(e)))
    return placed


def normal_half_extent(nodule: Nodule, view_angle: np.ndarray | float) -> np.ndarray:
    """Half-thickness of the nodule along the plane normal, in units of its radius."""
    cos, sin = np.cos(view_angle), np.sin(view_angle)
    return 1.0 / np.sqrt((sin / nodule.a) ** 2 + (cos / nodule.c) ** 2)


def in_plane_half_width(nodule: Nodule, view_angle: np.ndarray | float) -> np.ndarray:
    """Half-width of the nodule's central section, in units of its radius."""
    cos, sin = np.cos(view_angle), np.sin(view_angle)
    return 1.0 / np.sqrt((cos / nodule.a) ** 2 + (sin / nodule.c) ** 2)


def core_radius(nodule: Nodule, phi: np.ndarray, elev: float | np.ndarray) -> np.ndarray:
    """Margin radius (normalised; 1 is the ellipse) at polar angles ``phi``, no spicules.

    The lobulation phases drift with ``elev`` so the outline changes across the slices.
    """
    radius = np.ones_like(phi, dtype=np.float64)
    for k, (amp, phase, drift) in enumerate(
        zip(nodule.lobe_amp, nodule.lobe_phase, nodule.lobe_drift, strict=True), start=2
    ):
        radius = radius + amp * np.cos(k * phi + phase + drift * elev)
    return radius


def sweep_progress(n_frames: int) -> np.ndarray:
    """Sweep progress in [0, 1] of each frame, ``(T,)``."""
    return np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.array([0.5])


def nodule_track(
    nodule: Nodule, video: Video, years: float, fov: Fov, height: int, width: int
) -> NoduleTrack:
    """Where ``nodule`` is, and how big, in every frame of ``video`` (all vectorised)."""
    progress = sweep_progress(video.n_frames)  # (T,)
    v = video.v_start + (video.v_end - video.v_start) * progress  # (T,)
    q = video.q_start + (video.q_end - video.q_start) * progress  # (T,)
    tangent = np.array([math.cos(video.theta), math.sin(video.theta)])
    normal = np.array([-math.sin(video.theta), math.cos(video.theta)])
    pos = np.array([nodule.world_x, nodule.world_e])
    radius = nodule.radius * (1.0 + nodule.growth_per_year * years)
    view_angle = np.full(video.n_frames, video.theta - nodule.axis_angle)  # (T,)
    half_n = radius * normal_half_extent(nodule, view_angle)  # (T,)
    elev = (v - pos @ normal) / half_n  # (T,)
    scale = np.sqrt(np.clip(1.0 - elev**2, 0.0, 1.0))  # (T,)
    half_w = radius * in_plane_half_width(nodule, view_angle) * scale  # (T,)
    half_h = radius * nodule.b * scale**nodule.profile  # (T,)
    cx = width / 2 + (pos @ tangent - q)  # (T,)
    cy = np.full(video.n_frames, fov.centre_top + nodule.depth_frac * fov.depth)  # (T,)

    # Box of the core outline, sampled around the margin: (T, A) points.
    phi = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = core_radius(nodule, phi[None, :], elev[:, None])  # (T, A)
    xs = cx[:, None] + half_w[:, None] * r * np.cos(phi)  # (T, A)
    ys = cy[:, None] + half_h[:, None] * r * np.sin(phi)  # (T, A)
    boxes = np.stack(
        [np.floor(xs.min(1)), np.floor(ys.min(1)), np.ceil(xs.max(1)), np.ceil(ys.max(1))], 1
    )
    boxes = np.clip(boxes, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.int64)

    # Annotated when big enough and wholly inside the view: test the box's outline.
    t = np.linspace(0.0, 1.0, 9)
    bx = boxes[:, [0]] + (boxes[:, [2]] - boxes[:, [0]]) * t  # (T, 9)
    by = boxes[:, [1]] + (boxes[:, [3]] - boxes[:, [1]]) * t
    inside = (
        fov.contains(bx, boxes[:, [1]]).all(1)
        & fov.contains(bx, boxes[:, [3]]).all(1)
        & fov.contains(boxes[:, [0]], by).all(1)
        & fov.contains(boxes[:, [2]], by).all(1)
    )
    visible = (scale >= S_MIN) & inside & (boxes[:, 2] - boxes[:, 0] >= 3)
    return NoduleTrack(scale, elev, cx, cy, half_w, half_h, view_angle, boxes, visible)


def tracklets(video: Video, track: NoduleTrack, nodule_id: str) -> list[dict]:
    """Annotator-style tracklets of one nodule: one per continuous visible run.

    Key frames are the first and last visible frame plus every frame whose box overlaps
    the last key box with IoU below ``IOU_NEW_KEYFRAME``.
    """
    out: list[dict] = []
    visible = np.concatenate([[False], track.visible, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(visible) == 1)
    ends = np.flatnonzero(np.diff(visible) == -1)  # exclusive
    for start, end in zip(starts, ends, strict=True):
        keys = [int(start)]
        for frame in range(start + 1, end):
            if box_iou([track.boxes[frame]], [track.boxes[keys[-1]]])[0, 0] < IOU_NEW_KEYFRAME:
                keys.append(frame)
        if keys[-1] != end - 1:
            keys.append(int(end - 1))
        out.append(
            {
                "tracklet_id": f"{video.stem}-{nodule_id}-{len(out) + 1}",
                "nodule_id": nodule_id,
                "keyframes": [{"frame": f, "box": [int(v) for v in track.boxes[f]]} for f in keys],
            }
        )
    return out


def video_tracks(
    patient: Patient, study: Study, video: Video, height: int, width: int
) -> dict[str, NoduleTrack]:
    """Tracks of every nodule of the patient in one video, by nodule id."""
    return {
        n.nodule_id: nodule_track(n, video, study.years, patient.fov, height, width)
        for n in patient.nodules
    }


def video_annotations(patient: Patient, study: Study, video: Video, cfg: SynthConfig) -> dict:
    """The annotation JSON of one video: tracklets of every nodule it shows."""
    tracks = video_tracks(patient, study, video, cfg.height, cfg.width)
    out: list[dict] = []
    for nodule in patient.nodules:
        out.extend(tracklets(video, tracks[nodule.nodule_id], nodule.nodule_id))
    return {"tracklets": out}


def video_label(patient: Patient, study: Study, video: Video, cfg: SynthConfig) -> str:
    """The video's label: malignant if any nodule it shows (annotates) is, else benign."""
    tracks = video_tracks(patient, study, video, cfg.height, cfg.width)
    shown = [n for n in patient.nodules if tracks[n.nodule_id].visible.any()]
    return "malignant" if any(n.malignant for n in shown) else "benign"


def video_truth(patient: Patient, study: Study, video: Video, cfg: SynthConfig) -> list[dict]:
    """Every nodule the video shows: its malignancy, its visible frames and their boxes.

    ``visible`` is the annotator's own definition (see :func:`nodule_track`), so the key
    frames of :func:`video_annotations` are a subset of these frames, with the same boxes.
    """
    tracks = video_tracks(patient, study, video, cfg.height, cfg.width)
    out: list[dict] = []
    for nodule in patient.nodules:
        track = tracks[nodule.nodule_id]
        frames = np.flatnonzero(track.visible)  # (V,)
        if frames.size:
            out.append(
                {
                    "nodule_id": nodule.nodule_id,
                    "malignant": bool(nodule.malignant),
                    "frames": frames.tolist(),
                    "boxes": track.boxes[frames].tolist(),  # (V, 4) ints
                }
            )
    return out


def _sweep(
    rng: np.random.Generator, targets: list[Nodule], fov: Fov, years: float
) -> tuple[float, float, float, float, float]:
    """A sweep ``(theta, v_start, v_end, q_start, q_end)`` that slices through ``targets``."""
    if len(targets) == 2:
        # Sweep the plane's normal from one nodule to the other, with a little slant.
        d = np.array(
            [targets[1].world_x - targets[0].world_x, targets[1].world_e - targets[0].world_e]
        )
        theta = math.atan2(d[1], d[0]) - math.pi / 2 + rng.normal(0, 0.15)
    else:
        # Clinicians scan in two planes (transverse / longitudinal), give or take.
        theta = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.25)
    tangent = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-math.sin(theta), math.cos(theta)])
    v_n, u_n, half_n = [], [], []
    for n in targets:
        pos = np.array([n.world_x, n.world_e])
        radius = n.radius * (1.0 + n.growth_per_year * years)
        v_n.append(float(pos @ normal))
        u_n.append(float(pos @ tangent))
        half_n.append(float(radius * normal_half_extent(n, theta - n.axis_angle)))
    # Start and end well outside the target(s): they appear, grow, shrink and vanish.
    # Diagnostic clips dwell on the lesion: it fills about two thirds of the sweep.
    before, after = rng.uniform(0.9, 1.4, 2)  # margins, in half-thicknesses
    lo = min(v - before * h for v, h in zip(v_n, half_n, strict=True))
    hi = max(v + after * h for v, h in zip(v_n, half_n, strict=True))
    v_start, v_end = (lo, hi) if rng.random() < 0.5 else (hi, lo)
    fov_w = fov.right - fov.left
    # Where the first target sits on screen when the plane crosses it, and the drift.
    t_cross = (v_n[0] - v_start) / (v_end - v_start)
    screen = rng.uniform(-0.15, 0.15) * fov_w
    drift = rng.uniform(-0.3, 0.3) * fov_w
    if len(targets) == 2:
        t2 = (v_n[1] - v_start) / (v_end - v_start)
        # The probe slides so that the second target is on screen when it is crossed.
        screen2 = screen + rng.uniform(-0.1, 0.1) * fov_w
        gap = math.copysign(max(abs(t2 - t_cross), 0.2), t2 - t_cross)
        drift = ((u_n[1] - screen2) - (u_n[0] - screen)) / gap
    q_cross = u_n[0] - screen
    q_start = q_cross - drift * t_cross
    return theta, v_start, v_end, q_start, q_start + drift


def _field_offset(nodule: Nodule, theta: float) -> int:
    """The tissue field offset that puts ``nodule``'s own surroundings around it on screen.

    On screen the nodule sits at column ``W/2 + u - q`` and the tissue there comes from
    field column ``W/2 + u + offset``: an offset of ``anchor - u`` makes that column the
    nodule's fixed anchor, whatever the sweep.
    """
    u = nodule.world_x * math.cos(theta) + nodule.world_e * math.sin(theta)
    return nodule.tissue_anchor - round(u)


def _video_stem(seed: int, patient: int, study: int, video: int) -> str:
    """An anonymous file stem: a hash of the position in the archive, never of identity."""
    text = f"usv-synth/{seed}/{patient}/{study}/{video}".encode()
    return "us" + hashlib.blake2b(text, digest_size=8).hexdigest()


def _patient(cfg: SynthConfig, index: int, seq: np.random.SeedSequence) -> Patient:
    """Plan one patient from its own seed sequence."""
    rng = np.random.default_rng(seq)
    patient_id = f"MRN{int(rng.integers(0, 10**7)):07d}"
    name = _name(rng)
    fov = _fov(rng, cfg.height, cfg.width)
    n_nodules = int(rng.integers(1, cfg.max_nodules + 1))
    malignant = rng.random(n_nodules) < cfg.malignant_fraction
    nodules = _place(
        rng, [_nodule(rng, i, bool(m), cfg.height) for i, m in enumerate(malignant)], cfg.width
    )
    first = date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
    n_studies = int(rng.integers(1, cfg.max_studies + 1))
    dates = [first]
    for _ in range(n_studies - 1):  # follow-ups 3 to 14 months later
        dates.append(dates[-1] + timedelta(days=int(rng.integers(90, 430))))
    studies = []
    for s, exam_date in enumerate(dates):
        years = (exam_date - first).days / 365.25
        videos = []
        for j in range(int(rng.integers(1, cfg.max_videos_per_study + 1))):
            videos.append(_plan_video(cfg, rng, index, s, j, nodules, fov, years))
        studies.append(Study(exam_date.isoformat(), exam_date, years, tuple(videos)))
    render_seed = tuple(int(v) for v in seq.spawn(1)[0].generate_state(4))
    return Patient(index, patient_id, name, fov, tuple(nodules), tuple(studies), render_seed)


def _plan_video(
    cfg: SynthConfig,
    rng: np.random.Generator,
    patient: int,
    study: int,
    index: int,
    nodules: list[Nodule],
    fov: Fov,
    years: float,
) -> Video:
    """Plan one sweep that shows at least one nodule (two when they fit in the frames)."""
    lo, hi = math.log(cfg.min_frames), math.log(cfg.max_frames)
    n_frames = round(math.exp(rng.uniform(lo, hi)))
    order = [int(i) for i in rng.permutation(len(nodules))]
    want_two = len(nodules) >= 2 and rng.random() < 0.4
    stem = _video_stem(cfg.seed, patient, study, index)
    candidates = [[nodules[order[0]], nodules[order[1]]]] * 4 if want_two else []
    candidates += [[nodules[order[0]]]] * 8
    video = None
    for targets in candidates:
        theta, v0, v1, q0, q1 = _sweep(rng, targets, fov, years)
        offset = _field_offset(targets[0], theta)
        video = Video(stem, "mp4", n_frames, theta, v0, v1, q0, q1, offset, False, False)
        if all(
            nodule_track(n, video, years, fov, cfg.height, cfg.width).visible.any() for n in targets
        ):
            return video
    # Fallback that always works: the target centred on screen and big in every frame.
    target = nodules[order[0]]
    theta = float(rng.uniform(0, math.pi))
    normal = np.array([-math.sin(theta), math.cos(theta)])
    tangent = np.array([math.cos(theta), math.sin(theta)])
    pos = np.array([target.world_x, target.world_e])
    half_n = target.radius * float(normal_half_extent(target, theta - target.axis_angle))
    v, u = float(pos @ normal), float(pos @ tangent)
    return Video(stem, "mp4", n_frames, theta, v - 0.8 * half_n, v + 0.8 * half_n, u, u,
                 _field_offset(target, theta), False, False)  # fmt: skip


def _check(cfg: SynthConfig) -> None:
    """Reject settings no archive can be planned from."""
    if cfg.height % 2 or cfg.width % 2:
        raise ValueError(f"frame size must be even for H.264 4:2:0, got {cfg.width}x{cfg.height}")
    if not 1 <= cfg.min_frames <= cfg.max_frames:
        raise ValueError(
            f"need 1 <= min_frames <= max_frames, got {cfg.min_frames}, {cfg.max_frames}"
        )
    for name in ("annotated_fraction", "night_followups"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be a share in [0, 1], got {getattr(cfg, name)}")
    if cfg.night_new_patients < 0:
        raise ValueError(f"night_new_patients must be >= 0, got {cfg.night_new_patients}")


def plan_archive(cfg: SynthConfig) -> list[Patient]:
    """The whole archive's plan, a pure function of ``cfg`` (cheap: no pixels).

    Per-patient seeds come from ``SeedSequence(cfg.seed).spawn``, so a patient's plan and
    pixels do not depend on the number of patients after it or on the worker count.
    Archive-wide choices (which videos are DICOM, which labels are written as digits,
    which DICOM rows leave patient_id to the file's tag, and last which rows give their
    annotations file) are drawn after the patients, from one more child, so that every
    path of the input contract occurs. The annotated share is that generator's last
    draw, so at ``annotated_fraction=1.0`` every other choice is what it was before the
    setting existed.
    """
    _check(cfg)
    seqs = np.random.SeedSequence(cfg.seed).spawn(cfg.patients + 1)
    patients = [_patient(cfg, i, seqs[i]) for i in range(cfg.patients)]

    rng = np.random.default_rng(seqs[-1])
    keys = {
        (p, s, v): k
        for k, (p, s, v) in enumerate(
            (p, s, v)
            for p, pat in enumerate(patients)
            for s, st in enumerate(pat.studies)
            for v in range(len(st.videos))
        )
    }
    n = len(keys)
    n_dicom = min(n, max(1 if cfg.dicom_fraction > 0 else 0, round(cfg.dicom_fraction * n)))
    order = rng.permutation(n)
    dicom = set(order[:n_dicom].tolist())
    omit = set(order[: (n_dicom + 1) // 2].tolist())  # about half of the DICOM rows
    numeric = set(rng.permutation(n)[: max(1, round(0.2 * n))].tolist())
    # Keep this draw last: any draw added before it would change the rows above.
    annotated = set(rng.permutation(n)[: round(cfg.annotated_fraction * n)].tolist())
    out = []
    for p, pat in enumerate(patients):
        studies = []
        for s, st in enumerate(pat.studies):
            videos = []
            for v, video in enumerate(st.videos):
                k = keys[(p, s, v)]
                videos.append(
                    replace(
                        video,
                        fmt="dcm" if k in dicom else "mp4",
                        numeric_label=k in numeric,
                        omit_patient_id=k in omit,
                        annotated=k in annotated,
                    )
                )
            studies.append(replace(st, videos=tuple(videos)))
        out.append(replace(pat, studies=tuple(studies)))
    return out


def _follow_up(cfg: SynthConfig, patient: Patient, seq: np.random.SeedSequence) -> Patient:
    """``patient`` with one more exam, 3 to 14 months after the last: tonight's follow-up.

    The same breast (field of view, nodules, render seed) seen again: the nodules have
    grown by their ``growth_per_year`` since the first exam. The exam takes the patient's
    next study index, so its stems follow the archive's and never repeat one.
    """
    rng = np.random.default_rng(seq)
    first, last = patient.studies[0].exam_date, patient.studies[-1].exam_date
    exam_date = last + timedelta(days=int(rng.integers(90, 430)))
    years = (exam_date - first).days / 365.25
    study_index = len(patient.studies)
    videos = []
    for j in range(int(rng.integers(1, cfg.max_videos_per_study + 1))):
        video = _plan_video(
            cfg, rng, patient.index, study_index, j, list(patient.nodules), patient.fov, years
        )
        videos.append(replace(video, annotated=False))
    study = Study(exam_date.isoformat(), exam_date, years, tuple(videos))
    return replace(patient, studies=(*patient.studies, study))


def plan_night(cfg: SynthConfig, archive: list[Patient] | None = None) -> list[NightExam]:
    """Tonight's batch of unlabelled exams, a pure function of ``cfg`` (cheap: no pixels).

    ``round(night_followups * patients)`` archive patients, drawn at random, come back for
    a follow-up, in archive order; then ``night_new_patients`` new patients are planned as
    the archive's are, with one exam each, and IDs no archive patient has. Every video is
    MP4 without annotations. ``archive`` is ``plan_archive(cfg)``, passed to save planning
    it again.

    The draws come from ``SeedSequence([seed, FOLLOWUP_STREAM])`` (a child per archive
    patient, then one that picks who comes back) and ``SeedSequence([seed,
    NEW_PATIENT_STREAM])`` (a child per new patient, then one for replacement IDs): none of
    them is an archive stream, so the archive is the same with or without a night batch.
    """
    _check(cfg)
    archive = plan_archive(cfg) if archive is None else archive
    seqs = np.random.SeedSequence([cfg.seed, FOLLOWUP_STREAM]).spawn(len(archive) + 1)
    n_back = round(cfg.night_followups * len(archive))
    back = sorted(np.random.default_rng(seqs[-1]).permutation(len(archive))[:n_back].tolist())
    exams = [NightExam(_follow_up(cfg, archive[p], seqs[p]), True) for p in back]

    new = np.random.SeedSequence([cfg.seed, NEW_PATIENT_STREAM]).spawn(cfg.night_new_patients + 1)
    id_rng = np.random.default_rng(new[-1])
    one_exam = replace(cfg, max_studies=1)
    taken = {p.patient_id for p in archive}
    for k in range(cfg.night_new_patients):
        # Indices after the archive's: the stems hash the position, so none repeats.
        patient = _patient(one_exam, len(archive) + k, new[k])
        while patient.patient_id in taken:  # a new patient is never an archive patient
            patient = replace(patient, patient_id=f"MRN{int(id_rng.integers(0, 10**7)):07d}")
        taken.add(patient.patient_id)
        (study,) = patient.studies
        videos = tuple(replace(v, annotated=False) for v in study.videos)
        exams.append(NightExam(replace(patient, studies=(replace(study, videos=videos),)), False))
    return exams
