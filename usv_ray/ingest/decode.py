"""Open an ultrasound clip (any FFmpeg video via PyAV, or a DICOM cine via pydicom) and
yield gray uint8 frames, with fast sampling by frame index.

Ultrasound is gray, so the image is the luma (Y) plane of a decoded frame. For planar YUV
and gray pixel formats the plane is taken as stored, without swscale: this is about four
times cheaper than ``frame.to_ndarray(format="gray")``. Limited-range ("tv") video keeps
its 16-235 luma values; swscale's gray conversion would stretch them to 0-255, so the two
differ by that range mapping. Packed RGB and palette formats (GIF, ...) go through a
full-range BT.601 luma of their RGB, and DICOM pixels are windowed to 0-255 (see
``usv_ray.ingest.dicom``).

Random access works on the demuxed packets, kept in memory after one demux pass: to
decode frame ``i`` the decoder is fed from the key frame at or before it, or simply keeps
going when it is already inside that group of pictures, so sampling never decodes more
than a full pass would. See ``_packet_table_is_reliable`` for when this is allowed.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from usv_ray.ingest.clip import (
    LUMA_WEIGHTS,
    VideoError,
    VideoInfo,
    check_size,
    is_dicom,
)
from usv_ray.ingest.dicom import DicomClip

if TYPE_CHECKING:
    import av
    import av.container
    import av.video.frame
    import av.video.stream

# Pixel formats whose plane 0 is 8-bit luma.
_LUMA8_FORMATS = frozenset(
    {
        "gray",
        "yuv410p",
        "yuv411p",
        "yuv420p",
        "yuv422p",
        "yuv440p",
        "yuv444p",
        "yuvj411p",
        "yuvj420p",
        "yuvj422p",
        "yuvj440p",
        "yuvj444p",
        "yuva420p",
        "yuva422p",
        "yuva444p",
        "nv12",
        "nv16",
        "nv21",
        "nv24",
        "nv42",
    }
)
# Pixel formats whose plane 0 is little-endian 16-bit luma -> right shift to 8 bits.
_LUMA16_SHIFT = {
    "gray9le": 1,
    "gray10le": 2,
    "gray12le": 4,
    "gray14le": 6,
    "gray16le": 8,
    "yuv420p9le": 1,
    "yuv422p9le": 1,
    "yuv444p9le": 1,
    "yuv420p10le": 2,
    "yuv422p10le": 2,
    "yuv440p10le": 2,
    "yuv444p10le": 2,
    "yuv420p12le": 4,
    "yuv422p12le": 4,
    "yuv440p12le": 4,
    "yuv444p12le": 4,
    "yuv420p14le": 6,
    "yuv422p14le": 6,
    "yuv444p14le": 6,
    "yuv420p16le": 8,
    "yuv422p16le": 8,
    "yuv444p16le": 8,
    # MSB-aligned semi-planar formats: the sample sits in the high bits.
    "p010le": 8,
    "p012le": 8,
    "p016le": 8,
}
# Leading bytes of containers we can recognise, to tell a damaged video from a non-video.
_VIDEO_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"RIFF"),  # AVI
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x00\x00\x01\xb3"),  # MPEG-1/2 elementary stream
    (0, b"GIF8"),
    (0, b"FLV"),
    (0, b"OggS"),
)
# DivX user data; a trailing "p" marks "packed B-frames" (one packet holds two frames).
_DIVX_PACKED = re.compile(rb"DivX\d+(?:Build|b)\d+p")
# Containers whose packet timestamps are stored presentation times (or, for AVI and
# MPEG-PS, derived by FFmpeg's parser); a container not listed here is decoded sequentially.
_TIMESTAMPED_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "gif", "avi", "mpeg", "mpegts"})
# AVI stores no presentation times. FFmpeg derives true ones for MPEG-4 part 2 (its
# parser reads the VOP types) and intra-only codecs; for H.264 in AVI they are decode-order
# counters, wrong as soon as the stream has B-frames.
_AVI_TIMESTAMPED_CODECS = frozenset({"mpeg4", "mjpeg", "rawvideo", "ffv1", "huffyuv"})
# Codecs of the MPEG-4 part 2 family that AVI writers may store with packed B-frames.
_PACKABLE_CODECS = frozenset({"mpeg4", "msmpeg4v3", "msmpeg4v2", "msmpeg4", "h263"})


def luma_of_frame(frame: av.video.frame.VideoFrame) -> np.ndarray:
    """Gray uint8 (H, W) image of a decoded frame, a fresh array the caller owns.

    Planar YUV / gray formats: plane 0 as stored (16-bit formats shifted down to 8 bits).
    Other formats (rgb24, bgra, pal8, ...): BT.601 luma of the frame's RGB.
    """
    fmt = frame.format.name
    h, w = frame.height, frame.width
    if fmt in _LUMA8_FORMATS:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)  # (>=H, stride)
        # Copy: the decoder recycles this buffer once the frame is freed, and the copy
        # does not pin a whole YUV frame in the decoder's pool while the caller holds it.
        return rows[:h, :w].copy()
    shift = _LUMA16_SHIFT.get(fmt)
    if shift is not None:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, "<u2").reshape(-1, plane.line_size // 2)
        return (rows[:h, :w] >> shift).astype(np.uint8)
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
    return ((rgb.astype(np.uint32) @ LUMA_WEIGHTS + 128) >> 8).astype(np.uint8)


def _looks_like_video(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(16)
    return any(head[at : at + len(magic)] == magic for at, magic in _VIDEO_SIGNATURES)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError("missing_file", f"{path} does not exist")
    if not path.is_file():
        raise VideoError("not_video", f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise VideoError("empty_file", f"{path} is empty")


def _fps_of(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _packet_table_is_reliable(format_names: set[str], codec: str, packets: list[av.Packet]) -> bool:
    """Whether the demuxed packets map one-to-one to decoded frames by unique pts.

    The rule, checked against the nine real samples (MP4/MOV H.264 incl. yuv444p, AVI
    MPEG-4 part 2, MPEG-PS MPEG-2, GIF) and synthetic MP4/MKV/WebM/AVI/MPEG-PS/MPEG-TS
    files with and without B-frames, where packet count == plain-decode frame count and
    sorted packet pts == decoded frame pts:

    * the container is one whose packets carry presentation times (MP4/MOV, Matroska/WebM,
      GIF, MPEG-PS, MPEG-TS), or AVI with a codec whose presentation times FFmpeg derives
      (MPEG-4 part 2, intra-only codecs). H.264 in AVI is excluded: its AVI pts are
      decode-order counters, and with B-frames the pts -> frame mapping breaks (seen on
      a synthetic libx264 AVI: random access lost frames);
    * every packet has a pts and no two packets share one (raw .h264/.m2v elementary
      streams have none; field-coded video has two packets per frame);
    * no AVI-style "packed B-frames" (DivX user data ending in "p", or the tiny N-VOP
      placeholder packets that go with them), where one packet holds two frames.

    Anything else is decoded sequentially, which is always right but makes sampling as
    slow as a full decode.
    """
    if not packets or not (format_names & _TIMESTAMPED_FORMATS):
        return False
    if "avi" in format_names and codec not in _AVI_TIMESTAMPED_CODECS:
        return False
    pts = [p.pts for p in packets]
    if any(t is None for t in pts) or len(set(pts)) != len(pts):
        return False
    if codec in _PACKABLE_CODECS:
        if any(p.size <= 8 for p in packets):  # N-VOP placeholders
            return False
        for p in packets[:8]:
            if _DIVX_PACKED.search(bytes(p)):
                return False
    return True


class VideoReader:
    """Gray uint8 frames of one clip, by frame index; a context manager.

    ``info`` and ``warnings`` are filled on opening. ``warnings`` collects what a caller
    should log (damaged packets, a truncated file) while frames still come out.

    Frame indices count frames in presentation order, as a plain
    ``container.decode(video=0)`` yields them. The packets are demuxed once and kept in
    memory (compressed, a few MB for a typical clip) so that any set of indices costs at
    most one full decode.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, max_frame_pixels: int = 50_000_000):
        self.path = Path(path)
        self.warnings: list[str] = []
        self._container: av.container.InputContainer | None = None
        self._dicom: DicomClip | None = None
        _check_file(self.path)
        if is_dicom(self.path):
            self._dicom = DicomClip(self.path, max_frame_pixels)
            d = self._dicom
            self.info = VideoInfo(
                d.n_frames,
                d.fps,
                d.width,
                d.height,
                "dicom",
                d.patient_id,
                d.study_id,
                d.image_region,
            )
            return
        try:
            self._open_video(threads, max_frame_pixels)
        except BaseException:
            self.close()
            raise

    # ---- opening ---------------------------------------------------------------------

    def _open_video(self, threads: int, max_frame_pixels: int) -> None:
        import av

        try:
            self._container = av.open(str(self.path), "r")
        except av.error.FFmpegError as e:
            if _looks_like_video(self.path):
                raise VideoError(
                    "truncated", f"{self.path}: damaged or truncated video ({e})"
                ) from e
            raise VideoError("not_video", f"{self.path}: not a video FFmpeg can read") from e
        if not self._container.streams.video:
            raise VideoError("no_video_stream", f"{self.path}: no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        ctx = stream.codec_context
        check_size(ctx.width, ctx.height, max_frame_pixels, self.path)
        self._max_frame_pixels = max_frame_pixels
        if threads > 1:
            stream.thread_type = "AUTO"
        stream.thread_count = max(1, threads)

        # One demux pass, no decoding: packets in decode order; size-0 ones only flush.
        packets: list[av.Packet] = []
        try:
            for packet in self._container.demux(stream):
                if packet.size > 0 and not packet.is_discard:
                    packets.append(packet)
        except av.error.FFmpegError as e:
            self.warnings.append(f"demuxing stopped early after {len(packets)} packets: {e}")
        if not packets:
            kind = "truncated" if stream.frames > 0 else "no_frames"
            raise VideoError(kind, f"{self.path}: no video packets")
        if stream.frames > len(packets):
            self.warnings.append(
                f"file truncated: header lists {stream.frames} frames, "
                f"{len(packets)} packets present"
            )
        self._packets = packets
        self._bad_packets = 0
        self._lost_frames = 0
        self._run_start: int | None = None  # first packet of the current decode run
        self._next_pos = 0  # next packet to feed in the current run
        format_names = set(self._container.format.name.split(","))
        self._fast = _packet_table_is_reliable(format_names, ctx.name, packets)
        if self._fast:
            pts_sorted = sorted(p.pts for p in packets)
            self._pts_to_index = {t: i for i, t in enumerate(pts_sorted)}
            # Decode position of the packet of each frame index.
            self._frame_pos = [0] * len(packets)
            for pos, p in enumerate(packets):
                self._frame_pos[self._pts_to_index[p.pts]] = pos
            keys = [pos for pos, p in enumerate(packets) if p.is_keyframe]
            self._key_pos = keys if keys and keys[0] == 0 else [0, *keys]
            n_frames = len(packets)
        else:
            n_frames = sum(1 for _ in self._decode_run(0))
            if n_frames == 0:
                kind = "decode_error" if self._bad_packets else "no_frames"
                raise VideoError(kind, f"{self.path}: none of {len(packets)} packets decode")
        width, height = ctx.width, ctx.height
        self.info = VideoInfo(
            n_frames=n_frames,
            fps=_fps_of(stream),
            width=width,
            height=height,
            codec=ctx.name,
            patient_id=None,
            study_id=None,
        )

    # ---- decoding --------------------------------------------------------------------

    def _decode_packet(self, packet: av.Packet | None) -> list[av.video.frame.VideoFrame]:
        import av

        try:
            return self._stream.codec_context.decode(packet)
        except av.error.FFmpegError:
            self._bad_packets += 1
            return []

    def _restart(self, pos: int) -> None:
        """Start a new decode run at packet ``pos`` (a key frame)."""
        if self._run_start is not None:
            self._stream.codec_context.flush_buffers()
        self._run_start = pos
        self._next_pos = pos

    def _decode_run(
        self, pos: int, wanted: set[int] | None = None
    ) -> Iterator[av.video.frame.VideoFrame]:
        """Frames of a run from packet ``pos`` to the end, draining the decoder.

        With ``wanted`` (fast path only), a packet whose frame is not wanted is decoded
        with ``skip_frame="NONREF"``: a frame no other frame refers to (most B-frames) is
        then skipped rather than decoded, which halves the work of reaching a target.
        """
        self._restart(pos)
        ctx = self._stream.codec_context
        ctx.skip_frame = "DEFAULT"  # an abandoned run may have left it at NONREF
        skipping = False
        while self._next_pos < len(self._packets):
            packet = self._packets[self._next_pos]
            self._next_pos += 1
            if wanted is not None:
                skip = self._pts_to_index[packet.pts] not in wanted
                if skip != skipping:
                    ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
            yield from self._decode_packet(packet)
        if skipping:
            ctx.skip_frame = "DEFAULT"
        self._next_pos += 1  # past the end: the run is drained
        yield from self._decode_packet(None)

    def _check_frame(self, frame: av.video.frame.VideoFrame) -> None:
        check_size(frame.width, frame.height, self._max_frame_pixels, self.path)

    def _start_key(self, index: int) -> int:
        """Packet position of the key frame to start decoding frame ``index`` from."""
        pos = self._frame_pos[index]
        k = bisect.bisect_right(self._key_pos, pos) - 1
        target_pts = self._packets[pos].pts
        # Open GOP: a leading picture shown before its key frame needs the previous GOP.
        while k > 0 and self._packets[self._key_pos[k]].pts > target_pts:
            k -= 1
        return self._key_pos[k]

    def _frames_fast(self, targets: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        wanted = set(targets)
        ready: dict[int, np.ndarray] = {}
        run: Iterator[av.video.frame.VideoFrame] | None = None
        for target in targets:
            if target in ready:
                yield target, ready.pop(target)
                continue
            key = self._start_key(target)
            continuing = (
                run is not None
                and self._run_start is not None
                and self._run_start <= key <= self._next_pos
            )
            if not continuing:
                run = self._decode_run(key, wanted)
            assert run is not None
            for frame in run:
                index = self._pts_to_index.get(frame.pts)
                if index is None:
                    self.warnings.append(
                        f"decoded frame with unknown pts {frame.pts}; frame dropped"
                    )
                    continue
                if index in wanted and index >= target:
                    self._check_frame(frame)
                    ready[index] = luma_of_frame(frame)
                if index >= target:
                    break
            if target in ready:
                yield target, ready.pop(target)
            else:
                self._lost_frames += 1

    def _frames_sequential(self, targets: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        t = 0
        for index, frame in enumerate(self._decode_run(0)):
            if index == targets[t]:
                self._check_frame(frame)
                yield index, luma_of_frame(frame)
                t += 1
                if t == len(targets):
                    return

    def frames(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame_index, gray uint8 (H, W)) for the sorted unique ``indices`` (None: all
        frames), in order.

        Indices outside [0, n_frames) raise IndexError. A frame that cannot be decoded is
        skipped and counted in ``warnings``; when not a single frame decodes the call
        raises VideoError("decode_error").
        """
        n = self.info.n_frames
        targets = list(range(n)) if indices is None else sorted({int(i) for i in indices})
        if targets and (targets[0] < 0 or targets[-1] >= n):
            raise IndexError(f"frame indices must lie in [0, {n}), got {targets[0]}..")
        if not targets:
            return
        if self._dicom is not None:
            yield from self._dicom.frames(targets)
            return
        if self._container is None:
            raise ValueError("VideoReader is closed")
        bad_before = self._bad_packets
        self._lost_frames = 0
        n_yielded = 0
        source = self._frames_fast(targets) if self._fast else self._frames_sequential(targets)
        for item in source:
            n_yielded += 1
            yield item
        bad = self._bad_packets - bad_before
        if bad:
            self.warnings.append(f"{bad} packets could not be decoded")
        if self._lost_frames:
            self.warnings.append(f"{self._lost_frames} requested frames could not be decoded")
        if n_yielded == 0:
            raise VideoError("decode_error", f"{self.path}: no requested frame decodes")

    # ---- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Release the demuxed packets and the container; idempotent."""
        # Packets and streams point into the container: drop them before it goes.
        self._packets = []
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["VideoError", "VideoInfo", "VideoReader", "is_dicom", "luma_of_frame"]
