"""ByteTrack-style tracking: per-frame nodule detections of one video linked into tracks.

The association follows ByteTrack (Y. Zhang et al., "ByteTrack: Multi-Object Tracking by
Associating Every Detection Box", ECCV 2022). Its idea: a low-score detection is often the
right object seen badly (in ultrasound, a nodule under an acoustic shadow, at an oblique
angle, or blurred by a fast sweep), so it should extend a track that is already running,
but it is too unreliable to start one. Each :meth:`Tracker.update` at a frame:

1. Every live track predicts its box at this frame (motion below). A track is *active* if
   it was matched in the previous update, *lost* if it has gone unmatched since.
2. First association: high-score detections (``score >= high_score``) against every live
   track, active and lost, so a nodule that reappears resumes its old track.
3. Second association: low-score detections (``low_score <= score < high_score``) against
   the tracks that are still unmatched and were active in the previous update. A lost track
   is never resumed by a low-score detection: that is where false positives lie.
4. Unmatched detections with ``score >= new_track_score`` start tracks; other unmatched
   detections, and all detections below ``low_score``, are dropped.
5. Unmatched tracks become lost. A track ends once it has missed more than ``max_lost``
   frames: one last matched at frame ``L`` may still be matched at ``L + max_lost + 1``.
   Frames are counted by index, not by update, so ``max_lost`` is one time span whatever
   the sampling of the video.

Each association is a linear assignment on the cost ``1 - IoU`` of predicted track boxes
and detections, solved as ByteTrack solves it with ``lap.lapjv(cost, extend_cost=True,
cost_limit=1 - match_iou)``: leaving a track and a detection both unmatched costs
``1 - match_iou``, so a pair is only made when it beats that, and a pair below
``match_iou`` is never made. Here scipy's ``linear_sum_assignment`` solves the same
extended square matrix.

Motion: an alpha-beta filter on the box centre and size ``(cx, cy, w, h)`` with a constant
velocity per frame index (ByteTrack uses a Kalman filter; the alpha-beta filter is the
steady state of a constant-velocity Kalman filter on each coordinate, with two gains to set
instead of two noise matrices). The tracker is told each frame's index, so frames may be
skipped: a track last matched ``dt`` frames ago predicts ``x + v dt``, and a match with
residual ``r`` updates ``x <- x_pred + alpha r`` and ``v <- v + beta r / dt``. The velocity
starts at the second match as the difference of the first two boxes over their frame gap (two-point
initialisation), so a track follows a moving nodule from its third frame on.

Left out from ByteTrack: the unconfirmed-track stage (a new track counts from its first
detection), the separate IoU thresholds of the two passes (one ``match_iou`` here), and the
removal of duplicate active/lost tracks. Everything is deterministic numpy with no global
state; one :class:`Tracker` follows one video.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from usv_ray.boxes import as_boxes, box_iou

__all__ = ["Track", "Tracker", "TrackerSettings"]


@dataclass(frozen=True)
class TrackerSettings:
    """Thresholds and motion gains of :class:`Tracker` (defaults: ByteTrack's, in spirit)."""

    high_score: float = 0.5  # at or above: first association (may also resume a lost track)
    low_score: float = 0.1  # [low, high): second association only, to extend active tracks
    match_iou: float = 0.3  # minimum IoU of a predicted track box and a detection to pair
    new_track_score: float = 0.6  # an unmatched detection starts a track at or above this
    max_lost: int = 10  # frames (by index) a track may go unmatched; after that it ends
    position_gain: float = 0.6  # alpha: share of the residual taken into the box
    # beta: share of the residual per frame taken into the velocity; alpha 0.6 with beta
    # near alpha^2 / (2 - alpha) = 0.26 (Benedict-Bordner) trades noise against lag
    velocity_gain: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError(
                "need 0 <= low_score <= high_score <= new_track_score, got "
                f"{self.low_score}, {self.high_score}, {self.new_track_score}"
            )
        if not 0.0 < self.match_iou <= 1.0:
            # at 0, boxes that do not overlap at all could be paired
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.max_lost < 0:
            raise ValueError(f"max_lost must be >= 0, got {self.max_lost}")
        # inside the alpha-beta filter's stability region (0 < alpha < 2, 0 < beta < 4 - 2 alpha)
        if not 0.0 < self.position_gain <= 1.0:
            raise ValueError(f"position_gain must be in (0, 1], got {self.position_gain}")
        if not 0.0 <= self.velocity_gain < 2.0:
            raise ValueError(f"velocity_gain must be in [0, 2), got {self.velocity_gain}")


@dataclass(frozen=True, eq=False)
class Track:
    """One tracked nodule: the detections matched to it, frame by frame (arrays read-only).

    ``eq=False``: tracks compare by identity, since ``==`` on arrays is not a truth value.
    """

    track_id: int  # 0, 1, ... in creation order
    frames: tuple[int, ...]  # (F,) increasing frames where a detection was matched
    boxes: np.ndarray  # (F, 4) float64 the matched detection boxes x0, y0, x1, y1
    scores: np.ndarray  # (F,) float64 their detector scores

    @property
    def first(self) -> int:
        """Frame of the first matched detection."""
        return self.frames[0]

    @property
    def last(self) -> int:
        """Frame of the last matched detection."""
        return self.frames[-1]

    @property
    def length(self) -> int:
        """Number of matched frames (not ``last - first + 1``: gaps are not counted)."""
        return len(self.frames)

    @property
    def mean_score(self) -> float:
        """Mean detector score over the matched frames."""
        return float(self.scores.mean())


def _associate(iou: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Track rows and detection columns paired by the assignment of the module docstring.

    ``iou`` is ``(T, D)``. As ``lap.lapjv(1 - iou, extend_cost=True, cost_limit=limit)``:
    the cost matrix is extended to ``(T + D, T + D)`` with a dummy column per track and a
    dummy row per detection at ``limit / 2`` each, dummy-to-dummy at 0; a track or
    detection assigned to a dummy stays unmatched.
    """
    n_tracks, n_dets = iou.shape
    if n_tracks == 0 or n_dets == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    limit = 1.0 - min_iou
    extended = np.full((n_tracks + n_dets, n_tracks + n_dets), limit / 2)
    extended[:n_tracks, :n_dets] = 1.0 - iou
    extended[n_tracks:, n_dets:] = 0.0
    rows, cols = linear_sum_assignment(extended)
    real = (rows < n_tracks) & (cols < n_dets)
    rows, cols = rows[real], cols[real]
    close = iou[rows, cols] >= min_iou  # a pair exactly at the limit ties with the dummies
    return rows[close], cols[close]


def _centre_size(box: np.ndarray) -> np.ndarray:
    """``(4,)`` box ``x0, y0, x1, y1`` as ``cx, cy, w, h``."""
    return np.array(
        [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
    )


@dataclass
class _LiveTrack:
    """A track while it may still be matched: its detections and its alpha-beta state."""

    track_id: int
    state: np.ndarray  # (4,) cx, cy, w, h after the last match
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) each
    scores: list[float] = field(default_factory=list)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # (4,) per frame index
    active: bool = True  # matched in the latest update

    def predict(self, frame: int) -> np.ndarray:
        """``(4,)`` predicted box ``x0, y0, x1, y1`` at ``frame``."""
        cx, cy, w, h = self.state + self.velocity * (frame - self.frames[-1])
        w, h = max(w, 0.0), max(h, 0.0)  # a shrinking box stops at empty (IoU 0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def match(self, frame: int, box: np.ndarray, score: float, settings: TrackerSettings) -> None:
        """Take the detection ``box`` (4,) at ``frame`` into the track and its filter."""
        measured = _centre_size(box)
        if self.frames:
            dt = frame - self.frames[-1]
            if len(self.frames) == 1:  # two-point initialisation of the velocity
                self.velocity = (measured - self.state) / dt
                self.state = measured
            else:
                predicted = self.state + self.velocity * dt
                residual = measured - predicted
                self.state = predicted + settings.position_gain * residual
                self.velocity = self.velocity + settings.velocity_gain * residual / dt
        self.frames.append(frame)
        self.boxes.append(box.copy())  # a row of the caller's array, which it may reuse
        self.scores.append(score)

    def freeze(self) -> Track:
        """The track's detections as a read-only :class:`Track`."""
        boxes = np.array(self.boxes, dtype=np.float64).reshape(-1, 4)  # (F, 4)
        scores = np.array(self.scores, dtype=np.float64)  # (F,)
        boxes.setflags(write=False)
        scores.setflags(write=False)
        return Track(self.track_id, tuple(self.frames), boxes, scores)


class Tracker:
    """Links the detections of one video, given frame by frame, into tracks (see module).

    Example::

        tracker = Tracker(TrackerSettings())
        for frame, boxes, scores in detections:  # frames strictly increasing
            tracker.update(frame, boxes, scores)
        tracks = tracker.finish()
    """

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self._live: list[_LiveTrack] = []  # active and lost, in creation order
        self._ended: list[_LiveTrack] = []
        self._next_id = 0
        self._frame: int | None = None  # frame of the latest update

    def update(self, frame: int, boxes: npt.ArrayLike, scores: npt.ArrayLike) -> dict[int, int]:
        """Take the detections of one frame; returns which detection each track took here
        (track_id -> detection index), new tracks included, so a caller can keep what it
        needs of the frame (a patch of each box) while the frame is at hand.

        Args:
            frame: index of the frame in the video; strictly greater than the previous one
                (frames may be skipped).
            boxes: ``(N, 4)`` detection boxes ``x0, y0, x1, y1`` (``N`` may be 0).
            scores: ``(N,)`` detector scores.

        Raises:
            ValueError: ``frame`` not after the previous one, or bad boxes or scores
                (shapes, non-finite values). The tracker is unchanged then.
        """
        frame = operator.index(frame)
        if self._frame is not None and frame <= self._frame:
            raise ValueError(f"frames must increase: got frame {frame} after {self._frame}")
        boxes, scores = _detections(boxes, scores)
        settings = self.settings
        self._frame = frame

        # end the tracks that have missed more than max_lost frames before this one
        for track in self._live:
            if frame - track.frames[-1] - 1 > settings.max_lost:
                self._ended.append(track)
        live = [t for t in self._live if frame - t.frames[-1] - 1 <= settings.max_lost]

        predicted = np.array([t.predict(frame) for t in live]).reshape(-1, 4)  # (T, 4)
        high = np.flatnonzero(scores >= settings.high_score)  # (H,) detection indices
        low = np.flatnonzero((scores >= settings.low_score) & (scores < settings.high_score))
        matched = np.zeros(len(live), dtype=bool)  # (T,)
        taken: dict[int, int] = {}  # track_id -> detection index, this frame

        # first pass: high-score detections vs every live track
        rows, cols = _associate(box_iou(predicted, boxes[high]), settings.match_iou)
        for row, col in zip(rows, cols, strict=True):
            live[row].match(frame, boxes[high[col]], float(scores[high[col]]), settings)
            taken[live[row].track_id] = int(high[col])
        matched[rows] = True
        unmatched_high = np.setdiff1d(high, high[cols])  # (U,) sorted detection indices

        # second pass: low-score detections vs the unmatched tracks active last update
        candidates = np.flatnonzero(~matched & np.array([t.active for t in live], dtype=bool))
        rows, cols = _associate(box_iou(predicted[candidates], boxes[low]), settings.match_iou)
        for row, col in zip(rows, cols, strict=True):
            live[candidates[row]].match(frame, boxes[low[col]], float(scores[low[col]]), settings)
            taken[live[candidates[row]].track_id] = int(low[col])
        matched[candidates[rows]] = True

        for track, is_matched in zip(live, matched, strict=True):
            track.active = bool(is_matched)

        # new tracks, in detection order, from confident detections no track claimed
        for index in unmatched_high[scores[unmatched_high] >= settings.new_track_score]:
            track = _LiveTrack(self._next_id, _centre_size(boxes[index]))
            track.match(frame, boxes[index], float(scores[index]), settings)
            live.append(track)
            taken[track.track_id] = int(index)
            self._next_id += 1
        self._live = live
        return taken

    def finish(self) -> list[Track]:
        """Every track so far, ended and live, by first frame then id.

        The tracker is left as it is: more updates may follow, and ``finish`` again then
        gives the tracks extended.
        """
        tracks = [t.freeze() for t in self._ended + self._live]
        return sorted(tracks, key=lambda t: (t.first, t.track_id))


def _detections(boxes: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(boxes (N, 4) float64, scores (N,) float64)``."""
    boxes = as_boxes(boxes, "boxes")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        scores = scores.reshape(0)  # an empty list of any nesting is no scores
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must be (N,) for (N, 4) boxes, got {scores.shape} for {boxes.shape}"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("boxes and scores must be finite, found NaN or inf")
    return boxes, scores
