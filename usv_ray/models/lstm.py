"""The temporal stage of the variable-frame CNN-LSTM (method 1 of docs/methods.md).

:class:`VariableFrameLSTM` reads a video's 1 to 30 frame vectors, gives a probability per
frame and averages the probabilities of the video's real frames into the video's
prediction. Videos of different lengths share a batch: sorted by length and packed, so no
padding enters the LSTM. :class:`EqualFrameLSTM` is the paper's fixed-length baseline.

Shapes: B videos, T_max frames in the longest video of the batch, D = 512 feature channels,
H = LSTM hidden size, C = 2 classes (0 benign, 1 malignant). Models return tensors; the
loss is the pure function :func:`video_nll`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from usv_ray.schemas import FEATURE_DIM, NUM_CLASSES


def lstm_meta(hidden_size: int) -> dict:
    """What a :class:`VariableFrameLSTM` weights file records of the network's shape."""
    return {
        "model": "VariableFrameLSTM",
        "input_size": FEATURE_DIM,
        "hidden": hidden_size,
        "num_layers": 1,
        "num_classes": NUM_CLASSES,
    }


def _check_lengths(lengths: Tensor, batch: int, t_max: int) -> Tensor:
    """Validate per-video frame counts; return them as a CPU int64 tensor (B,)."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64)  # pack_padded_sequence wants them on the CPU
    empty = (lengths < 1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"zero-length video(s) at batch index {empty}: a video needs at least one frame "
            "to have a prediction; drop such videos before batching"
        )
    if int(lengths.max()) > t_max:
        raise ValueError(
            f"a length ({int(lengths.max())}) exceeds the padded time dimension T_max={t_max}"
        )
    return lengths


class VariableFrameLSTM(nn.Module):
    """LSTM over a batch of videos with different frame counts; mean frame probability per video.

    The paper's scheme (its Fig. 5): sort the videos by length, pack them so no padding
    enters the LSTM, unpack the per-frame outputs with zero padding, softmax per frame, and
    average the probabilities of each video's real frames.

    Why the mean of probabilities, not of logits: it is the paper's rule (and its CNN_Aver
    baseline's), so frame and video predictions live on one [0, 1] scale and the 0.5
    threshold means the same for both; and a single frame can move the video's prediction by
    at most 1/T, whereas one frame with an extreme logit would dominate a mean of logits.
    Training therefore uses the NLL of the log of the mean probability (:func:`video_nll`).
    """

    def __init__(
        self,
        input_size: int = FEATURE_DIM,
        hidden_size: int = 256,
        num_layers: int = 1,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            input_size: feature channels per frame (the frame CNN's 512).
            hidden_size: LSTM hidden size (the paper: 256).
            num_layers: stacked LSTM layers.
            num_classes: classes per frame.
            dropout: dropout between stacked LSTM layers (ignored for one layer).
        """
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden_size, num_classes)  # per frame: hidden -> class logits

    def forward(
        self, features: Tensor, lengths: Tensor, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Video probabilities from padded frame features.

        Args:
            features: ``(B, T_max, D)`` frame features, padded after each video's last frame;
                the padding values are never read.
            lengths: ``(B,)`` integer frame counts, 1 <= length <= T_max (int64 on the CPU;
                moved there otherwise, which synchronizes a GPU).
            return_frames: also return the per-frame probabilities.

        Returns:
            ``video_prob (B, C)``, rows summing to 1, in the input's batch order; with
            ``return_frames``, also ``frame_prob (B, T_max, C)``, zero at padded frames.

        Raises:
            ValueError: on a bad shape, a zero length, or a length above T_max.
        """
        if features.dim() != 3:
            raise ValueError(f"features must be (B, T_max, D), got {tuple(features.shape)}")
        batch, t_max, _ = features.shape
        lengths = _check_lengths(lengths, batch, t_max)  # (B,) CPU int64

        # Sort longest first (stable, so ties keep their order) and pack: the LSTM then runs
        # over sum(lengths) frames, never over padding.
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)  # (B,), (B,)
        packed = pack_padded_sequence(
            features[order.to(features.device)], sorted_lengths, batch_first=True
        )  # data: (sum(lengths), D)
        packed_hidden, _ = self.lstm(packed)  # data: (sum(lengths), H)

        # Head and softmax on the packed frames only; unpacking then pads with exact zeros,
        # so a sum over time is a sum over real frames.
        packed_prob = packed_hidden._replace(
            data=self.head(packed_hidden.data).softmax(dim=-1)  # (sum(lengths), C)
        )
        frame_prob, _ = pad_packed_sequence(
            packed_prob, batch_first=True, padding_value=0.0, total_length=t_max
        )  # (B, T_max, C), sorted order, zeros after each video's last frame
        denom = sorted_lengths.to(device=frame_prob.device, dtype=frame_prob.dtype)  # (B,)
        video_prob = frame_prob.sum(dim=1) / denom[:, None]  # (B, C)

        restore = torch.argsort(order).to(features.device)  # inverse permutation, (B,)
        video_prob = video_prob[restore]  # (B, C), input order
        if return_frames:
            return video_prob, frame_prob[restore]  # (B, C), (B, T_max, C)
        return video_prob


class EqualFrameLSTM(VariableFrameLSTM):
    """The paper's equal-frame baseline: the same network on fixed-length ``(B, N, D)`` videos.

    Every video has N frames, so this is :class:`VariableFrameLSTM` with all lengths N (the
    packing is then a plain reordering); weights and state dicts are interchangeable.
    """

    def forward(  # type: ignore[override]
        self, features: Tensor, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Video probabilities ``(B, C)`` (and ``frame_prob (B, N, C)``) from ``(B, N, D)``."""
        if features.dim() != 3:
            raise ValueError(f"features must be (B, N, D), got {tuple(features.shape)}")
        batch, frames, _ = features.shape
        lengths = torch.full((batch,), frames, dtype=torch.int64)  # (B,) all N
        return super().forward(features, lengths, return_frames=return_frames)


# -----------------------------------------------------------------------------
# Batching and loss


def pad_features(sequences: Sequence[Tensor], pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Stack per-video frame features ``[(T_i, D), ...]`` into ``(B, T_max, D)`` and lengths.

    For collate functions. Returns ``(padded (B, T_max, D), lengths (B,) int64 on the CPU)``;
    positions past a video's length hold ``pad_value``.

    Raises:
        ValueError: on an empty list, a sequence that is not 2-D, unequal D, or a video
            with no frames (it could have no prediction).
    """
    if len(sequences) == 0:
        raise ValueError("pad_features needs at least one sequence")
    for i, seq in enumerate(sequences):
        if seq.dim() != 2:
            raise ValueError(f"sequence {i} must be (T, D), got {tuple(seq.shape)}")
        if seq.shape[0] == 0:
            raise ValueError(f"sequence {i} has zero frames")
        if seq.shape[1] != sequences[0].shape[1]:
            raise ValueError(
                f"sequence {i} has {seq.shape[1]} channels, sequence 0 has {sequences[0].shape[1]}"
            )
    lengths = torch.tensor([seq.shape[0] for seq in sequences], dtype=torch.int64)  # (B,)
    padded = pad_sequence(list(sequences), batch_first=True, padding_value=pad_value)
    return padded, lengths  # (B, T_max, D), (B,)


def video_nll(video_prob: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood of the labels under mean-of-frames probabilities.

    ``video_prob (B, C)`` are probabilities (not logits), so the loss is NLL on their log,
    clamped at 1e-8 so a confident wrong video gives a large finite loss, not inf.
    ``labels (B,)`` int64 class indices. Returns a scalar.
    """
    return F.nll_loss(torch.log(video_prob.clamp_min(1e-8)), labels)
