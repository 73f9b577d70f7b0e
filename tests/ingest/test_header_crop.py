"""``ingest.crop_from_header``: a DICOM's own ultrasound regions say where the image is, so
the scanner's burned-in text band stays out of every stored pixel; without regions (and for
other files) ``crop_box`` decides, as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_inputs import write_dicom

from usv_ray.config import IngestConfig, output_settings
from usv_ray.ingest.dicom import image_region
from usv_ray.ingest.manifest import VideoTask
from usv_ray.ingest.video import ingest_video

HEIGHT, WIDTH, BAND = 60, 80, 12  # the text band: the top 12 rows


def _region(x0, y0, x1, y1, spatial_format=1):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat = spatial_format  # 1: 2D; 2: M-mode; 3: spectral
    item.RegionDataType = 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1  # inclusive
    return item


def test_the_image_region_bounds_the_2d_regions_only():
    from pydicom.dataset import Dataset

    ds = Dataset()
    assert image_region(ds, WIDTH, HEIGHT) is None
    ds.SequenceOfUltrasoundRegions = [
        _region(10, 15, 49, 44),  # tissue
        _region(20, 20, 69, 39),  # colour flow, reaching further right
        _region(0, 45, 79, 59, spatial_format=3),  # a Doppler spectrum below: not image
    ]
    assert image_region(ds, WIDTH, HEIGHT) == (10, 15, 70, 45)
    ds.SequenceOfUltrasoundRegions = [_region(0, 12, 500, 500)]  # clipped to the frame
    assert image_region(ds, WIDTH, HEIGHT) == (0, 12, WIDTH, HEIGHT)
    broken = Dataset()
    broken.RegionSpatialFormat = 1  # no location: says nothing
    ds.SequenceOfUltrasoundRegions = [broken]
    assert image_region(ds, WIDTH, HEIGHT) is None


def _cine(path: Path, regions: list | None) -> Path:
    """Gray content (at most 150) under a white text band, with or without regions."""
    import pydicom

    rng = np.random.default_rng(0)
    frames = rng.integers(20, 150, (4, HEIGHT, WIDTH), dtype=np.uint8)
    frames[:, :BAND] = 255  # burned-in name and date
    write_dicom(path, frames, "MRN-7")
    if regions is not None:
        ds = pydicom.dcmread(path)
        ds.SequenceOfUltrasoundRegions = regions
        ds.save_as(path, enforce_file_format=True)
    return path


def _stored(tmp_path: Path, path: Path, **settings) -> np.ndarray:
    cfg = IngestConfig(sampling="all", frame_size=32, trim_fov=False, **settings)
    task = VideoTask("vid", path.name, str(path), "pk", None, None, 1, None, "fp")
    out = tmp_path / path.stem
    entry = ingest_video(task, cfg, b"k" * 16, out)
    assert entry["video"]["status"] == "ok"
    table = pq.read_table(out / "frames" / "vid.parquet", columns=["image"])
    return np.stack([np.frombuffer(b, np.uint8) for b in table["image"].to_pylist()])


@pytest.mark.parametrize(
    ("regions", "crop_box", "band_kept"),
    [
        ([_region(0, BAND, WIDTH - 1, HEIGHT - 1)], (0.0, 0.0, 1.0, 1.0), False),  # the header
        (None, (0.0, 0.25, 1.0, 1.0), False),  # no regions: crop_box cuts the band
        (None, (0.0, 0.0, 1.0, 1.0), True),  # no regions, nothing configured: kept
    ],
)
def test_the_text_band_stays_outside_the_header_crop(tmp_path, regions, crop_box, band_kept):
    path = _cine(tmp_path / "cine.dcm", regions)
    stored = _stored(tmp_path, path, crop_box=crop_box, crop_from_header=True)
    assert (stored.max() > 200) == band_kept
    without = _stored(tmp_path, path, crop_box=(0.0, 0.0, 1.0, 1.0), crop_from_header=False)
    assert without.max() > 200  # the setting off: the header is not read for the crop


def test_folders_made_before_the_setting_keep_their_fingerprint(tmp_path):
    import json

    from usv_ray.io import FolderClaimed
    from usv_ray.layout import IngestFolder

    assert "crop_from_header" not in output_settings(IngestConfig())
    assert output_settings(IngestConfig(crop_from_header=True))["crop_from_header"] is True
    folder = IngestFolder(tmp_path)
    folder.claim(IngestConfig())
    record = json.loads(folder.record.read_text())
    del record["settings"]["crop_from_header"]  # as an older usv_ray wrote it
    folder.record.write_text(json.dumps(record))
    folder.claim(IngestConfig())  # resumes: the older folder cropped as the default does
    assert folder.settings()["crop_from_header"] is False
    with pytest.raises(FolderClaimed, match="crop_from_header"):
        folder.claim(IngestConfig(crop_from_header=True))
    # a training stage's folder fingerprints the frame settings of its data: the same
    from usv_ray.layout import fingerprint

    frames = {"frame_size": 64, "crop_box": [0, 0, 1, 1]}
    before = fingerprint({}, frames, "data")
    assert fingerprint({}, {**frames, "crop_from_header": False}, "data") == before
    assert fingerprint({}, {**frames, "crop_from_header": True}, "data") != before
