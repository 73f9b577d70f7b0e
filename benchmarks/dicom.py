"""Memory of a long DICOM cine at ingest: frame by frame, not the whole clip at once.

A 2,000-frame 800 x 600 RGB cine (JPEG Baseline, YBR_FULL_422 as scanners send it; about
2.9 GB once decoded) is read as ingest reads it, each way in a fresh process:

1. **ingest's reader** (``VideoReader``): ingest's 30 sampled frames, then every frame;
2. **the whole clip at once** (pydicom's ``Dataset.pixel_array``), the way ingest read
   DICOM before frame-level decoding, for scale: on the cine's first ``--whole-frames``
   frames (200), as the whole 2,000 would need about 25 GB (pydicom converts YBR to RGB
   in floating point).

Printed: each process's peak resident memory (``VmHWM``: getrusage's peak would count the
parent's memory from before the child's exec) above what it held after its imports, against
one decoded frame (1.37 MB) and the whole clip. Target: ingest's reader, every frame read,
peaks within 20 frames' memory above its start.

Run: ``.venv/bin/python benchmarks/dicom.py`` (about 2 minutes on 2 cores; ``--frames
200`` for a quick look).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 600, 800
MB = 2**20

PROBE = r"""
import json, sys, time
from pathlib import Path

def status_mb(field):  # VmRSS now, VmHWM its peak: this process's own (not its parent's)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

way, path = sys.argv[1], Path(sys.argv[2])
import pydicom
from usv_ray.ingest.decode import VideoReader
from usv_ray.config import IngestConfig
from usv_ray.ingest.video import sample_indices
start = status_mb("VmRSS")
began = time.perf_counter()
if way == "reader":
    with VideoReader(path) as reader:
        n = reader.info.n_frames
        keep = sample_indices(n, IngestConfig(sampling="variable", n_frames=30))
        sampled = sum(1 for _ in reader.frames(keep))
        every = sum(1 for _ in reader.frames())
else:
    pixels = pydicom.dcmread(path).pixel_array
    n = every = sampled = int(pixels.shape[0])
peak = status_mb("VmHWM")
print(json.dumps({"start_mb": start, "peak_mb": peak, "frames": every, "sampled": sampled,
                  "seconds": time.perf_counter() - began}))
"""


def write_cine(path: Path, frames: int) -> None:
    """A moving speckle-like RGB cine, each frame a JPEG (4:2:2), encapsulated."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    rng = np.random.default_rng(0)
    field = rng.integers(0, 200, (HEIGHT, WIDTH + frames), dtype=np.uint8)
    encoded = []
    for t in range(frames):
        gray = field[:, t : t + WIDTH]
        rgb = np.stack([gray, gray, gray], axis=-1)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=90, subsampling=1)
        encoded.append(buffer.getvalue())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.FrameTime, ds.NumberOfFrames = "US", 33.3, frames
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = HEIGHT, WIDTH, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def probe(way: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, way, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--whole-frames", type=int, default=200, help="0: not the whole way")
    args = parser.parse_args()
    frame_mb = HEIGHT * WIDTH * 3 / MB
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cine.dcm"
        began = time.perf_counter()
        write_cine(path, args.frames)
        print(
            f"cine: {args.frames} frames of {WIDTH} x {HEIGHT} RGB, JPEG Baseline "
            f"YBR_FULL_422, {path.stat().st_size / MB:.0f} MB on disk, "
            f"{args.frames * frame_mb:,.0f} MB decoded; written in "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
        results = {"reader": probe("reader", path)}
        if args.whole_frames:
            short = Path(tmp) / "short.dcm"
            write_cine(short, min(args.whole_frames, args.frames))
            results["whole"] = probe("whole", short)
    print(f"one decoded frame: {frame_mb:.2f} MB")
    for way, r in results.items():
        grown = r["peak_mb"] - r["start_mb"]
        print(
            f"{way:>6}: peak {r['peak_mb']:.0f} MB, {grown:.0f} MB above its start "
            f"({grown / frame_mb:.1f} frames), {r['frames']} frames in {r['seconds']:.1f} s "
            f"({r['sampled']} sampled first)"
        )
    grown = results["reader"]["peak_mb"] - results["reader"]["start_mb"]
    ok = grown <= 20 * frame_mb
    print(f"reader within 20 frames' memory: {'PASS' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
