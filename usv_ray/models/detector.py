"""The nodule detectors, on gray frames ``(B, 1, S, S)`` normalised by
:func:`usv_ray.imaging.normalise`. One explicit dict of choices (:data:`DETECTORS`):

- ``centernet``: a CenterNet-style head (Zhou et al., "Objects as Points", 2019) on the
  frame CNN's ResNet-18 trunk: layers 1-3 merged top-down to stride 4, a heatmap of nodule
  centres, and each centre's box size and sub-pixel offset. Light: no anchors, no FPN
  levels a nodule of a few dozen pixels never uses.
- ``fcos``: torchvision's FCOS (Tian et al., 2019) on a ResNet-18 FPN (P3-P7, 64
  channels): the single-stage detector torchvision ships.

Both start from random initialisation (a gray conv1), and both are one ``nn.Module``
whose ``forward(images, boxes)`` returns the training loss when given the true boxes
(a list of ``(n_i, 4)`` tensors, ``x0, y0, x1, y1`` in pixels; empty for a frame without a
nodule) and otherwise the detections: for each frame ``(boxes (k, 4), scores (k,))``,
scores above ``score_threshold``. The loss goes through ``forward`` so DDP syncs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usv_ray.models.frame_cnn import gray_resnet18

Detections = list[tuple[Tensor, Tensor]]  # per frame: boxes (k, 4), scores (k,)


class CenterNet(nn.Module):
    """Nodule centres as heatmap peaks at stride 4, each with its box size and offset."""

    stride = 4

    def __init__(self, score_threshold: float = 0.05, max_detections: int = 20, width: int = 64):
        super().__init__()
        resnet = gray_resnet18()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)  # /4
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (64, 128, 256))
        self.merge = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, out, 1)
            )

        self.heatmap, self.size, self.offset = head(1), head(2), head(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))  # prior 0.1
        self.score_threshold, self.max_detections = score_threshold, max_detections

    def load_trunk(self, trunk: Mapping[str, Tensor]) -> None:
        """Start from a gray ResNet-18's weights (:func:`gray_resnet18`'s keys): its conv1,
        bn1 and layers 1-3 are the stem and the levels here; layer4 is not used."""
        names = {"conv1": "stem.0", "bn1": "stem.1"}
        mine = {}
        for key, value in trunk.items():
            head, _, rest = key.partition(".")
            if head in names:
                mine[f"{names[head]}.{rest}"] = value
            elif head in ("layer1", "layer2", "layer3"):
                mine[key] = value
        levels = ("stem", "layer1", "layer2", "layer3")
        wanted = {k for k in self.state_dict() if k.split(".")[0] in levels}
        if set(mine) != wanted:
            differ = sorted(set(mine) ^ wanted)[:4]
            raise RuntimeError(f"not a gray ResNet-18 trunk: {differ} differ")
        self.load_state_dict(mine, strict=False)

    def _maps(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c1 = self.layer1(self.stem(images))  # (B, 64, S/4, S/4)
        c2 = self.layer2(c1)  # (B, 128, S/8, S/8)
        c3 = self.layer3(c2)  # (B, 256, S/16, S/16)
        top = self.lateral[2](c3)
        for lateral, level in ((self.lateral[1], c2), (self.lateral[0], c1)):
            top = F.interpolate(top, size=level.shape[-2:], mode="nearest") + lateral(level)
        top = self.merge(top)  # (B, width, S/4, S/4)
        return self.heatmap(top), self.size(top), self.offset(top)  # logits, (w, h), (dx, dy)

    def forward(self, images: Tensor, boxes: list[Tensor] | None = None) -> Tensor | Detections:
        heat, size, offset = self._maps(images)
        if boxes is not None:
            return centernet_loss(heat, size, offset, boxes, self.stride)
        return self._decode(heat.sigmoid(), size, offset)

    def _decode(self, heat: Tensor, size: Tensor, offset: Tensor) -> Detections:
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # (B, 1, h, w)
        batch, _, height, width = heat.shape
        scores, index = peaks.view(batch, -1).topk(min(self.max_detections, height * width))
        out = []
        for b in range(batch):
            keep = scores[b] >= self.score_threshold
            i = index[b][keep]
            ys, xs = (i // width).float(), (i % width).float()
            cx = (xs + offset[b, 0].view(-1)[i]) * self.stride  # (k,) pixels
            cy = (ys + offset[b, 1].view(-1)[i]) * self.stride
            w = size[b, 0].view(-1)[i].clamp_min(0) * self.stride
            h = size[b, 1].view(-1)[i].clamp_min(0) * self.stride
            out.append(
                (torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), scores[b][keep])
            )
        return out


def centernet_loss(
    heat: Tensor, size: Tensor, offset: Tensor, boxes: list[Tensor], stride: int
) -> Tensor:
    """CenterNet's loss: penalty-reduced focal loss on the centre heatmap (a Gaussian bump
    per nodule), and L1 on the size (in stride units, weight 0.1) and sub-pixel offset of
    each true centre. ``heat``: logits ``(B, 1, h, w)``; ``boxes``: per frame ``(n, 4)``.
    In fp32 whatever the autocast: in bf16 the clamp below 1 rounds to 1, and log(0) is inf."""
    heat, size, offset = heat.float(), size.float(), offset.float()
    height, width = heat.shape[-2:]
    target = torch.zeros_like(heat)  # (B, 1, h, w)
    ys, xs = torch.meshgrid(
        torch.arange(height, device=heat.device),
        torch.arange(width, device=heat.device),
        indexing="ij",
    )
    size_loss, offset_loss, centres = heat.new_zeros(()), heat.new_zeros(()), 0
    for b, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in (frame_boxes.to(heat.device) / stride).tolist():
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            px, py = min(int(cx), width - 1), min(int(cy), height - 1)
            sigma = max((x1 - x0 + y1 - y0) / 12, 0.5)  # a third of the half-size
            bump = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
            target[b, 0] = torch.maximum(target[b, 0], bump)
            wh = torch.tensor([x1 - x0, y1 - y0], device=heat.device)
            size_loss = size_loss + (size[b, :, py, px] - wh).abs().sum()
            delta = torch.tensor([cx - px, cy - py], device=heat.device)
            offset_loss = offset_loss + (offset[b, :, py, px] - delta).abs().sum()
            centres += 1
    prob = heat.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target == 1
    focal = torch.where(
        positive,
        -((1 - prob) ** 2) * torch.log(prob),
        -((1 - target) ** 4) * prob**2 * torch.log(1 - prob),
    ).sum()
    n = max(centres, 1)
    return (focal + 0.1 * size_loss + offset_loss) / n


class Fcos(nn.Module):
    """torchvision's FCOS on a ResNet-18 FPN (layers 2-4 and P6-P7, 64 channels)."""

    def __init__(self, size: int, score_threshold: float = 0.05, max_detections: int = 20):
        super().__init__()
        from torchvision.models.detection import FCOS
        from torchvision.models.detection.backbone_utils import BackboneWithFPN
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        backbone = BackboneWithFPN(
            gray_resnet18(),
            {"layer2": "0", "layer3": "1", "layer4": "2"},
            [128, 256, 512],
            64,
            extra_blocks=LastLevelP6P7(64, 64),
        )
        # frames come normalised and at size S already: the transform keeps them as they are
        self.model = FCOS(
            backbone,
            num_classes=2,  # background and nodule
            min_size=size,
            max_size=size,
            image_mean=[0.0],
            image_std=[1.0],
            score_thresh=score_threshold,
            nms_thresh=0.5,
            detections_per_img=max_detections,
            topk_candidates=100,
        )

    def load_trunk(self, trunk: Mapping[str, Tensor]) -> None:
        """Start from a gray ResNet-18's weights (:func:`gray_resnet18`'s keys): the FPN's
        body is that ResNet."""
        self.model.backbone.body.load_state_dict(trunk, strict=True)

    def forward(self, images: Tensor, boxes: list[Tensor] | None = None) -> Tensor | Detections:
        frames = list(images)  # [(1, S, S)] * B
        if boxes is not None:
            targets = [
                {
                    "boxes": b.to(images.device),
                    "labels": torch.ones(len(b), dtype=torch.int64, device=images.device),
                }
                for b in boxes
            ]
            return sum(self.model(frames, targets).values())
        return [(d["boxes"], d["scores"]) for d in self.model(frames)]


# the detectors by name: each built from (input size, score threshold)
DETECTORS: dict[str, Callable[[int, float], nn.Module]] = {
    "centernet": lambda size, threshold: CenterNet(threshold),  # a head on ResNet-18
    "fcos": Fcos,  # torchvision's FCOS on a ResNet-18 FPN
}


def build_detector(meta: Mapping) -> nn.Module:
    """A freshly built detector of the kind and input size its metadata records.

    Raises:
        ValueError: for an unknown kind.
    """
    kind = meta.get("model")
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r} (one of {', '.join(DETECTORS)})")
    return DETECTORS[kind](int(meta["input_size"]), float(meta.get("score_threshold", 0.05)))
