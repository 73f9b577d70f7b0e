"""Tracklet annotations: parse the per-video JSON, interpolate boxes, sample T frames.

A tracklet spans its first to its last key frame; a frame between two key frames takes the
union of those two key frames' boxes (the re-ID paper's rule), a key frame its own box.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

from usv_ray.errors import UsvRayError
from usv_ray.frames import uniform_positions

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels


class AnnotationError(UsvRayError, ValueError):
    """An annotations file, or one tracklet in it, that does not fit the contract."""


@dataclass(frozen=True)
class Tracklet:
    tracklet_id: str
    nodule_id: str | None
    frames: tuple[int, ...]  # key frame indices, strictly increasing
    boxes: tuple[Box, ...]  # one per key frame

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def covers(self, frame: int) -> bool:
        """Whether ``frame`` lies within the tracklet (first to last key frame)."""
        return self.first <= frame <= self.last

    def box_at(self, frame: int) -> Box:
        """The box at ``frame``: the key frame's own, else the union of its neighbours'."""
        if not self.first <= frame <= self.last:
            raise ValueError(f"frame {frame} outside tracklet [{self.first}, {self.last}]")
        i = bisect.bisect_left(self.frames, frame)
        if self.frames[i] == frame:
            return self.boxes[i]
        a, b = self.boxes[i - 1], self.boxes[i]
        return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))

    def sample_frames(self, count: int) -> list[int]:
        """``count`` frame indices uniformly along the tracklet (repeats when it is shorter)."""
        return uniform_positions(self.last - self.first + 1, count, self.first).tolist()


def _parse_tracklet(item: object, position: int) -> Tracklet:
    if not isinstance(item, dict):
        raise AnnotationError(f"tracklet {position}: expected an object")
    tracklet_id = item.get("tracklet_id")
    if not isinstance(tracklet_id, str) or not tracklet_id:
        raise AnnotationError(f"tracklet {position}: tracklet_id must be a non-empty string")
    nodule_id = item.get("nodule_id")
    if nodule_id is not None and not isinstance(nodule_id, str):
        raise AnnotationError(f"tracklet {position}: nodule_id must be a string or null")
    keyframes = item.get("keyframes")
    if not isinstance(keyframes, list) or not keyframes:
        raise AnnotationError(f"tracklet {position}: keyframes must be a non-empty list")
    parsed: dict[int, Box] = {}
    for key in keyframes:
        frame = key.get("frame") if isinstance(key, dict) else None
        box = key.get("box") if isinstance(key, dict) else None
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise AnnotationError(f"tracklet {position}: key frame {frame!r} is not a frame index")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            or not (box[2] > box[0] and box[3] > box[1])
        ):
            raise AnnotationError(
                f"tracklet {position}: box {box!r} at frame {frame} is not [x0, y0, x1, y1] "
                "with x1 > x0 and y1 > y0"
            )
        if frame in parsed:
            raise AnnotationError(f"tracklet {position}: frame {frame} annotated twice")
        parsed[frame] = tuple(float(v) for v in box)
    frames = tuple(sorted(parsed))
    return Tracklet(tracklet_id, nodule_id, frames, tuple(parsed[f] for f in frames))


def is_inline(annotations: str) -> bool:
    """Whether a manifest's ``annotations`` value is the JSON itself (else a file's path)."""
    return annotations.lstrip().startswith("{")


def load_tracklets(source: str | Path) -> list[Tracklet]:
    """Parse annotations: the path of a JSON file, or the JSON itself (a manifest cell
    that starts with ``{``); raises :class:`AnnotationError` naming what is wrong."""
    try:
        if isinstance(source, str) and is_inline(source):
            data = json.loads(source)
        else:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnnotationError("the annotations file does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"not readable JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tracklets"), list):
        raise AnnotationError('expected {"tracklets": [...]}')
    tracklets = [_parse_tracklet(item, i) for i, item in enumerate(data["tracklets"])]
    ids = [t.tracklet_id for t in tracklets]
    if len(set(ids)) != len(ids):
        raise AnnotationError("tracklet_id values repeat within the file")
    return tracklets
