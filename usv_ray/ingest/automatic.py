"""Automatic tracklets: a video's frames, as ingest decodes them, through the detector and
the tracker, into tracklets made as ingest makes annotated ones.

:class:`AutoTracklets` follows one video. Ingest hands it every frame it decodes for
detection (the de-identified crop, then the field of view, as the stored frames are cut;
``detect.track.every``-th frame), in order. It detects on batches of frames resized to the
detector's input size, maps the boxes back to source pixels, links them with the
:class:`~usv_ray.ingest.track.Tracker`, and cuts each matched box's patch while the frame
is at hand, so a video is decoded once. A track keeps at most ``4 T`` patches: when it
holds more it drops every other one and keeps every second match from then on, so its
patches stay spread evenly along it in bounded memory. At the end each track long and
confident enough (``detect.track.min_frames``, ``detect.track.min_score``) becomes a
tracklet: ``T`` patches sampled uniformly along it, and its box on every frame it was
matched in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from usv_ray.config import DetectConfig
from usv_ray.frames import resize_gray, uniform_positions
from usv_ray.ingest.track import Tracker, TrackerSettings


def tracking_settings(cfg: DetectConfig) -> dict:
    """The detect settings a video's automatic tracklets depend on (with the detector
    itself): the tracker's section and the detector's score threshold."""
    from usv_ray.config import to_dict

    return {"score_threshold": cfg.score_threshold, "track": to_dict(cfg.track)}


Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


@dataclass(frozen=True)
class View:
    """Where a video's stored frames come from: the source ``region`` resized to ``size``."""

    region: Region  # in source pixels: the de-identification crop, then the field of view
    size: int  # the stored frames are size x size

    def to_stored(self, boxes: np.ndarray) -> np.ndarray:
        """Source-pixel boxes ``(N, 4)`` in the stored frame's pixels, clipped to it."""
        x0, y0, x1, y1 = self.region
        scale = np.array([self.size / (x1 - x0), self.size / (y1 - y0)] * 2)
        shifted = (np.asarray(boxes, np.float64).reshape(-1, 4) - [x0, y0, x0, y0]) * scale
        return np.clip(shifted, 0, self.size)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Stored-frame boxes ``(N, 4)`` in source pixels."""
        x0, y0, x1, y1 = self.region
        scale = np.array([(x1 - x0) / self.size, (y1 - y0) / self.size] * 2)
        return np.asarray(boxes, np.float64).reshape(-1, 4) * scale + [x0, y0, x0, y0]


@dataclass
class _Patches:
    """A track's patches, thinned by halves as it grows (see the module docstring)."""

    cap: int
    frames: list[int] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)
    step: int = 1
    seen: int = 0

    def add(self, frame: int, patch: np.ndarray) -> None:
        if self.seen % self.step == 0:
            self.frames.append(frame)
            self.patches.append(patch)
            if len(self.frames) > self.cap:
                self.frames, self.patches = self.frames[::2], self.patches[::2]
                self.step *= 2
        self.seen += 1


@dataclass(frozen=True)
class AutoTracklet:
    """A track made a tracklet: what ingest writes of it."""

    track_id: int
    frame_index: list[int]  # (T,) source frames of the patches, repeats when it is short
    patches: np.ndarray  # (T, H, W) uint8
    box_frames: list[int]  # every frame it was matched in
    boxes: np.ndarray  # (F, 4) its box there, source pixels
    score: float  # mean detection score


def tracker_settings(cfg: DetectConfig) -> TrackerSettings:
    """The tracker's settings from ``cfg.track``; ValueError names a setting out of range."""
    track = cfg.track
    if not 1 <= track.every <= track.max_lost + 1:
        raise ValueError(
            f"every must be from 1 to max_lost + 1 ({track.max_lost + 1}), got {track.every}: "
            "a track unmatched for more than max_lost frames ends"
        )
    return TrackerSettings(
        high_score=track.high,
        low_score=track.low,
        match_iou=track.iou,
        new_track_score=track.new_score,
        max_lost=track.max_lost,
    )


Detect = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]  # (B, S, S) -> per frame


class AutoTracklets:
    """One video's automatic tracklets (see the module docstring).

    ``detect`` takes a batch of stored-size frames ``(B, S, S)`` uint8 and returns, per
    frame, ``(boxes (k, 4) in the frame's pixels, scores (k,))``; ``cut`` cuts the patch
    of a source-pixel box from the cropped frame it is given.
    """

    def __init__(
        self,
        detect: Detect,
        cfg: DetectConfig,
        tracklet_frames: int,
        cut: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> None:
        self.detect, self.cfg, self.cut = detect, cfg, cut
        self.frames = tracklet_frames
        self.tracker = Tracker(tracker_settings(cfg))
        self.patches: dict[int, _Patches] = {}
        self._batch: list[tuple[int, np.ndarray, np.ndarray, View]] = []

    def add(self, index: int, region: np.ndarray, cropped: np.ndarray, view: View) -> None:
        """Frame ``index``: ``region`` the field of view (what the stored frame shows, before
        resizing), ``cropped`` the de-identified frame patches are cut from."""
        self._batch.append((index, resize_gray(region, view.size, view.size), cropped, view))
        if len(self._batch) >= self.cfg.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        found = self.detect(np.stack([frame for _, frame, _, _ in self._batch]))  # (B, S, S)
        for (index, _, cropped, view), (boxes, scores) in zip(self._batch, found, strict=True):
            source = view.to_source(boxes)  # (k, 4)
            for track_id, i in self.tracker.update(index, source, scores).items():
                buffer = self.patches.setdefault(track_id, _Patches(4 * self.frames))
                buffer.add(index, self.cut(cropped, source[i]))
        self._batch = []

    def finish(self) -> list[AutoTracklet]:
        """The tracks long and confident enough, as tracklets, by first frame."""
        self._flush()
        out = []
        for track in self.tracker.finish():
            if (
                track.length < self.cfg.track.min_frames
                or track.mean_score < self.cfg.track.min_score
            ):
                continue
            kept = self.patches[track.track_id]
            chosen = uniform_positions(len(kept.frames), self.frames)  # (T,)
            out.append(
                AutoTracklet(
                    track.track_id,
                    [kept.frames[i] for i in chosen],
                    np.stack([kept.patches[i] for i in chosen]),
                    list(track.frames),
                    np.asarray(track.boxes, np.float64),
                    track.mean_score,
                )
            )
        return out
