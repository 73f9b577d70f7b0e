"""Image formation: text band, field of view, speckle, sweep motion and dark nodules."""

import numpy as np
import pytest

from usv_ray.config import SynthConfig
from usv_ray.synth.bmode import PatientScene, smooth_noise, text_band, tissue_field
from usv_ray.synth.plan import plan_archive, sweep_progress, video_annotations

CFG = SynthConfig(patients=4, max_frames=40, min_frames=8)


@pytest.fixture(scope="module")
def rendered():
    """Every video of the small plan, rendered (no codec): [(patient, study, video, frames)]."""
    out = []
    for patient in plan_archive(CFG):
        scene = PatientScene.build(patient, CFG)
        for study in patient.studies:
            for video in study.videos:
                out.append((patient, study, video, scene.render(study, video)))
    return out


def test_frames_have_the_planned_shape(rendered):
    for _, _, video, frames in rendered:
        assert frames.shape == (video.n_frames, CFG.height, CFG.width)
        assert frames.dtype == np.uint8


def test_text_band_is_bright_and_ends_above_the_crop(rendered):
    band, fov_top = int(np.floor(0.10 * CFG.height)), int(np.ceil(0.12 * CFG.height))
    for _, _, _, frames in rendered:
        assert (frames[:, :band].max(axis=(1, 2)) >= 200).all()
        assert frames[:, band:fov_top].max() == 0


@pytest.mark.parametrize(("height", "width"), [(240, 320), (120, 160), (480, 640), (100, 400)])
def test_text_band_fits_any_frame_size(height, width):
    text = text_band(["DOE, Jane", "ID MRN0000001", "2024-01-02"], height, width)
    assert text.shape == (int(np.floor(0.10 * height)), width)
    assert text.max() >= 200
    assert text[-2:].max() == 0  # a margin above the crop for codec ringing


def test_view_is_black_outside_and_below_the_text(rendered):
    for patient, _, _, frames in rendered:
        scene = PatientScene.build(patient, CFG)
        rows = np.flatnonzero(scene.mask.any(axis=1))
        assert rows[0] >= 0.12 * CFG.height
        below_text = np.zeros_like(scene.mask)
        below_text[int(0.10 * CFG.height) :] = True
        assert frames[:, ~scene.mask & below_text].max() == 0
        assert frames[:, scene.mask].mean() > 40  # the view itself is bright tissue


def test_nodules_are_darker_than_the_tissue_around_them(rendered):
    ratios = []
    for patient, study, video, frames in rendered:
        for tracklet in video_annotations(patient, study, video, CFG)["tracklets"]:
            for key in tracklet["keyframes"]:
                x0, y0, x1, y1 = key["box"]
                frame = frames[key["frame"]].astype(np.float64)
                m = max(4, (x1 - x0) // 3)
                outer = frame[max(0, y0 - m) : y1 + m + 1, max(0, x0 - m) : x1 + m + 1]
                inner = frame[y0 : y1 + 1, x0 : x1 + 1]
                ring = (outer.sum() - inner.sum()) / (outer.size - inner.size)
                ratios.append(inner.mean() / ring)
    assert ratios and max(ratios) < 1.0
    assert np.median(ratios) < 0.7


def test_sweep_translates_tissue_smoothly(rendered):
    """A linear probe's next frame is this frame shifted by the planned probe motion."""
    checked = 0
    for patient, _, video, frames in rendered:
        if patient.fov.kind != "linear" or video.n_frames < 2:
            continue
        probe = video.q_start + (video.q_end - video.q_start) * sweep_progress(video.n_frames)
        step = int(round(probe[1]) - round(probe[0]))  # the tissue moves left by this much
        rows = slice(int(0.2 * CFG.height), int(0.9 * CFG.height))
        cols = slice(patient.fov.left + 20, patient.fov.right - 20)
        shifted = np.roll(frames[0], -step, axis=1)[rows, cols].astype(np.float64)
        following = frames[1][rows, cols].astype(np.float64)
        corr = np.corrcoef(shifted.ravel(), following.ravel())[0, 1]
        assert 0.8 < corr < 0.9999  # the same tissue and speckle, a little decorrelated
        checked += 1
    assert checked


def test_speckle_is_rayleigh_like():
    rng = np.random.default_rng(0)
    z = smooth_noise(rng, (256, 256), (0.8, 1.4)) + 1j * smooth_noise(rng, (256, 256), (0.8, 1.4))
    amplitude = np.abs(z)
    # Rayleigh: mean / std = sqrt(pi / (4 - pi)) ~ 1.91
    assert amplitude.mean() / amplitude.std() == pytest.approx(1.91, rel=0.05)


def test_tissue_field_layers_and_attenuation():
    field = tissue_field(np.random.default_rng(0), 200, 1280)
    assert field.shape == (200, 1280) and field.dtype == np.float32
    skin, gland, chest = field[:4].mean(), field[90:110].mean(), field[-10:].mean()
    assert skin > gland > chest
    assert np.allclose(field[:, :5], field[:, :5])  # finite, no NaN
    assert np.isfinite(field).all()
