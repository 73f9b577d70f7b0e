"""The pyarrow schema of every table that stages exchange (docs/folders.md: the files).

Stages talk only through these tables. Images are stored as raw uint8 bytes, row-major,
with their shape in sibling columns, so any Parquet reader can rebuild them with
``np.frombuffer(image, np.uint8).reshape(height, width)``.
"""

from __future__ import annotations

import pyarrow as pa

LABELS = {"benign": 0, "malignant": 1, "0": 0, "1": 1}
UNKNOWN_LABEL = -1

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # keyed hash of the source path
        pa.field("patient_key", pa.string()),  # null when the patient is unknown (error rows)
        pa.field("study_key", pa.string()),
        pa.field("label", pa.int8(), nullable=False),  # 0 benign, 1 malignant, -1 unknown
        pa.field("source", pa.string(), nullable=False),  # path as in the manifest, ID redacted
        pa.field("n_frames", pa.int32()),  # frames a full decode yields
        pa.field("fps", pa.float32()),
        pa.field("width", pa.int32()),  # of the source video, before cropping
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),  # "kind: message" when status is error
        # the source region its stored frames show (x0, y0, x1, y1 pixels, end-exclusive):
        # the de-identification crop, then the field of view; resized to frame_size square
        pa.field("view", pa.list_(pa.int32(), 4)),
        # its annotations are whole (the file read, every tracklet usable): its frames hold
        # every nodule's box, so a detector may train on them
        pa.field("annotated", pa.bool_()),
    ]
)

ERRORS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("video_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # manifest | decode | ingest
        pa.field("kind", pa.string(), nullable=False),  # e.g. missing_file, not_video
        pa.field("message", pa.string(), nullable=False),
    ]
)

FRAMES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),  # index in the source video
        pa.field("seq_index", pa.int16(), nullable=False),  # position among the kept frames
        pa.field("seq_len", pa.int16(), nullable=False),  # kept frames of this video
        pa.field("image", pa.binary(), nullable=False),  # uint8 gray, height x width
        pa.field("height", pa.int16(), nullable=False),
        pa.field("width", pa.int16(), nullable=False),
        # the annotated nodules' boxes in this frame, in its own pixels: [] none in it,
        # null when the video has no annotations (a detector trains on the non-null rows)
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ]
)

TRACKLETS = pa.schema(
    [
        pa.field("tracklet_id", pa.string(), nullable=False),  # keyed hash
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string()),
        pa.field("nodule_id", pa.string()),  # keyed hash of the annotated nodule; null: unknown
        pa.field("frame_index", pa.list_(pa.int32()), nullable=False),  # T source frames
        pa.field("clip", pa.binary(), nullable=False),  # uint8, T x height x width
        pa.field("n_frames_total", pa.int32(), nullable=False),  # frames the tracklet spans
        pa.field("height", pa.int16(), nullable=False),
        pa.field("width", pa.int16(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # annotated | automatic
        pa.field("score", pa.float32()),  # automatic: the mean detection score; else null
        # its box on every frame it covers (annotated: first to last key frame; automatic:
        # the frames the tracker matched it in), source pixels x0, y0, x1, y1
        pa.field("box_frames", pa.list_(pa.int32()), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
    ]
)

NUM_CLASSES = 2  # labels: 0 benign, 1 malignant
FEATURE_DIM = 512  # the frame CNN's pooled output

FEATURES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("fold", pa.int8(), nullable=False),  # the CNN: trained without this fold
        pa.field("seq_index", pa.int16(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),  # index in the source video
        pa.field("feature", pa.list_(pa.float32(), FEATURE_DIM), nullable=False),
        pa.field("frame_prob", pa.float32(), nullable=False),  # the CNN's P(malignant)
    ]
)

PREDICTIONS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("fold", pa.int8(), nullable=False),  # the fold the video was tested in
        pa.field("method", pa.string(), nullable=False),  # e.g. Variable-frame CNNLSTM
        pa.field("prob", pa.float32(), nullable=False),  # P(malignant)
        pa.field("label", pa.int8(), nullable=False),  # the truth: 0 benign, 1 malignant
    ]
)

EMBEDDING_DIM = 512  # the R(2+1)D-18 extractor's pooled output

EMBEDDINGS = pa.schema(
    [
        pa.field("tracklet_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=False),  # L2 = 1
        pa.field("model", pa.string(), nullable=False),  # e.g. "CM 3f9a..." (kind, weights)
    ]
)

NODULES = pa.schema(  # the nodule index: one row per nodule of a patient
    [
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("nodule_uid", pa.string(), nullable=False),  # stable across nightly runs
        pa.field("tracklet_ids", pa.list_(pa.string()), nullable=False),  # sorted
        pa.field("study_keys", pa.list_(pa.string()), nullable=False),  # exams that show it
        pa.field("centroid", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=False),  # L2 = 1
        pa.field("n_tracklets", pa.int32(), nullable=False),
        pa.field("first_study", pa.string()),  # the exam it was first indexed from
        pa.field("last_study", pa.string()),  # the latest exam that added a tracklet
        pa.field("updated_at", pa.timestamp("ms", tz="UTC"), nullable=False),  # Parquet has no s
        pa.field("index_version", pa.string(), nullable=False),  # model, clip shape, tau, method
        # the evidence: videos and exams its tracklets come from
        pa.field("n_videos", pa.int32(), nullable=False),
        pa.field("n_studies", pa.int32(), nullable=False),
        # its malignancy (usv-ray index --diagnoses): calibrated P(malignant) pooled over its
        # tracklets or videos (nodule_scoring), over all of them and at its first and latest
        # exam; null where none of them is diagnosed
        pa.field("malignancy", pa.float32()),
        pa.field("malignancy_first", pa.float32()),
        pa.field("malignancy_latest", pa.float32()),
        pa.field("turned_suspicious", pa.bool_()),  # below the threshold first, at or above now
        pa.field("nodule_scoring", pa.string()),  # tracklets | videos
        pa.field("diagnosis_version", pa.string()),  # the diagnosis bundle's model version
    ]
)

DIAGNOSES = pa.schema(  # usv-ray predict: one row per video and model version
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string()),
        pa.field("study_key", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),  # the diagnosis bundle's
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),  # why a video could not be diagnosed
        pa.field("prob", pa.float32()),  # calibrated P(malignant): what a reader is shown
        pa.field("prob_raw", pa.float32()),  # the ensemble's mean P before calibration
        pa.field("spread", pa.float32()),  # standard deviation of the member models' P
        pa.field("member_probs", pa.list_(pa.float32())),  # each member's P, bundle order
        pa.field("reading", pa.string()),  # malignant | benign at the bundle's threshold
        pa.field("threshold", pa.float32()),  # of calibrated P: the bundle's operating point
        pa.field("frames", pa.int16()),  # frames the models read
        pa.field("diagnosed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)

TRACKLET_DIAGNOSES = pa.schema(  # usv-ray predict: each tracklet's frames read on their own
    [
        pa.field("tracklet_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string()),
        pa.field("study_key", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("prob", pa.float32(), nullable=False),  # calibrated P(malignant)
        pa.field("prob_raw", pa.float32(), nullable=False),
        pa.field("spread", pa.float32(), nullable=False),
        pa.field("member_probs", pa.list_(pa.float32()), nullable=False),
        pa.field("frames", pa.int16(), nullable=False),  # stored frames within its span
        pa.field("diagnosed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)
