"""The frame CNN of the variable-frame CNN-LSTM (method 1 of docs/methods.md), and its trunk.

:class:`FrameCNN` classifies single gray 224 x 224 frames (ResNet-18, three fc layers to 2
classes). Once trained, its fc layers are skipped and :meth:`FrameCNN.features` gives the
512-d vector of every frame, saved once so the temporal stage (:mod:`usv_ray.models.lstm`)
never reruns the CNN. Its ResNet-18 (:func:`gray_resnet18`) is the 2D trunk the
CenterNet detector shares. Shapes: B frames, C = 2 classes (0 benign, 1 malignant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from usv_ray.schemas import FEATURE_DIM, NUM_CLASSES

FRAME_CNN_HIDDEN = (256, 64)  # the paper's fc head: 512 -> 256 -> 64 -> 2


def gray_resnet18() -> nn.Module:
    """torchvision's ResNet-18 (random init) with a one-channel conv1 (gray ultrasound, the
    geometry of ResNet's RGB one) and no fc: frames ``(B, 1, H, W)`` -> ``(B, 512)``.

    torchvision is imported here so that the temporal stage never pays for it.
    """
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.fc = nn.Identity()
    return resnet


# -----------------------------------------------------------------------------
# Spatial stage: one frame -> 512-d feature -> 2 logits


class FrameCNN(nn.Module):
    """ResNet-18 on one gray frame, then three fc layers to the class logits.

    ``features(x)`` is the 512-d pooled ResNet output that the temporal stage consumes;
    ``forward(x)`` adds the fc head. Built from random init; :func:`load_imagenet` loads
    ImageNet weights into it when a state dict is at hand. Input normalization is the
    caller's job. A ``channels_last`` model and input work as they are: nothing here
    depends on memory layout (pooling output is flattened, not viewed).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = FRAME_CNN_HIDDEN,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.5,
    ) -> None:
        """Build the network.

        Args:
            hidden_sizes: widths of the two hidden fc layers (the paper: 512 -> 256 -> 64 -> 2).
            num_classes: output logits.
            dropout: dropout probability after each hidden fc layer (not given in the paper).
        """
        super().__init__()
        self.backbone = gray_resnet18()  # the 512-d pooled vector; the head replaces fc

        layers: list[nn.Module] = []
        width = FEATURE_DIM
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)

    def features(self, frames: Tensor) -> Tensor:
        """The 512-d pooled ResNet output of each frame: ``(B, 1, 224, 224) -> (B, 512)``."""
        if frames.dim() != 4 or frames.shape[1] != 1:
            raise ValueError(f"expected gray frames (B, 1, H, W), got {tuple(frames.shape)}")
        return self.backbone(frames)  # (B, 512)

    def forward(self, frames: Tensor) -> Tensor:
        """Class logits of each frame: ``(B, 1, 224, 224) -> (B, num_classes)``."""
        return self.head(self.features(frames))  # (B, 512) -> (B, C)


def frame_cnn_meta() -> dict:
    """What a :class:`FrameCNN` weights file records of the network's shape (the input is
    one gray channel, normalised by :func:`usv_ray.imaging.normalise`)."""
    return {
        "model": "FrameCNN",
        "in_channels": 1,
        "hidden_sizes": list(FRAME_CNN_HIDDEN),
        "num_classes": NUM_CLASSES,
        "feature_dim": FEATURE_DIM,
    }


def gray_imagenet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ResNet-18 ImageNet state dict as :func:`gray_resnet18`'s weights.

    conv1's RGB kernels are summed into the single gray channel: a gray frame copied into
    R, G and B gives ``sum_c W_c * x = (sum_c W_c) * x``, so the summed kernel responds to
    the gray frame exactly as the RGB network responds to its three-channel copy (up to
    ImageNet's per-channel normalization, which differs only slightly between channels).
    The 1000-class ``fc`` is dropped. Nothing is downloaded here: pass e.g.
    ``torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict()`` where the weights are
    available.
    """
    adapted = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    conv1 = adapted["conv1.weight"]  # (64, 3, 7, 7), or already (64, 1, 7, 7)
    adapted["conv1.weight"] = conv1.sum(dim=1, keepdim=True)  # (64, 1, 7, 7)
    return adapted


def load_imagenet(model: FrameCNN, state_dict: Mapping[str, Tensor]) -> FrameCNN:
    """Load a torchvision ResNet-18 ImageNet state dict into ``model``'s backbone, in place
    (:func:`gray_imagenet`); the fc head keeps its random init.

    Raises:
        RuntimeError: if a backbone key is missing or unexpected (strict loading).
    """
    model.backbone.load_state_dict(gray_imagenet(state_dict), strict=True)
    return model


def imagenet_weights_path() -> Path:
    """Where torchvision caches ResNet-18's ImageNet weights; an error if they are not there.

    Nothing is ever downloaded at run time.

    Raises:
        FileNotFoundError: naming the expected file and how to fill the cache elsewhere.
    """
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained: imagenet needs {path} (torchvision's weight cache). On a machine "
            'that may download, run `python -c "import torchvision; '
            "torchvision.models.resnet18(weights='IMAGENET1K_V1')\"` and copy the file "
            "there (or set TORCH_HOME), or leave classify.pretrained unset"
        )
    return path


def cached_imagenet_weights() -> dict[str, Tensor]:
    """torchvision's ResNet-18 ImageNet state dict, from the local cache only."""
    return torch.load(imagenet_weights_path(), map_location="cpu")
