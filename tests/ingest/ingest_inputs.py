"""Small inputs for ingest tests: H.264 clips with a burned-in text band, DICOM cine."""

from pathlib import Path

import av
import numpy as np

TEXT_ROWS = 0.1  # the top 10% of a test clip holds white "text", as scanners draw it


def clip_frames(n_frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(T, H, W) uint8: a text band on top, a moving mid-gray pattern below, black edges."""
    rng = np.random.default_rng(seed)
    field = rng.integers(40, 120, (height, width + n_frames), dtype=np.uint8)
    frames = np.zeros((n_frames, height, width), np.uint8)
    text = int(TEXT_ROWS * height)
    for t in range(n_frames):
        frames[t, int(0.15 * height) : height - 4, 8 : width - 8] = field[
            int(0.15 * height) : height - 4, t + 8 : t + width - 8
        ]
        frames[t, 1 : text - 1, 2 : width // 2] = 255
    return frames


def write_mp4(path: Path, frames: np.ndarray, gop: int = 10, fps: int = 10) -> Path:
    """Encode (T, H, W) gray frames as H.264 (yuv420p, B-frames on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_dicom(
    path: Path, frames: np.ndarray | None, patient_id: str, name: str = "Doe^Jane"
) -> Path:
    """A multi-frame MONOCHROME2 8-bit ultrasound cine; ``frames=None``: no pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.3.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "US"
    if frames is not None:
        ds.NumberOfFrames = len(frames)
        ds.Rows, ds.Columns = frames.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
