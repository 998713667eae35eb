"""The architectures: torchvision's study nets adapted to one-channel slices, a small CNN, and the
AudioSet study's logistic regression and LSTMs over VGGish sequences.

Every net is wrapped in `MoodNet`, which standardises its input with the training set's mean and
standard deviation, so a registered model takes raw features as the feature stages write them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from tasks.config import ArchConfig
from tasks.fetch import fetch

log = logging.getLogger("tasks")
GOOGLENET_AUX_WEIGHT = 0.3  # torchvision's reference recipe: loss = main + 0.3 x each auxiliary head


class SmallCNN(nn.Module):
    """Four conv blocks and global pooling: the spectrogram baseline that trains in seconds on a CPU."""

    def __init__(self, n_classes: int, dropout: float = 0.3, width: int = 16) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 1
        for out in (width, 2 * width, 4 * width, 8 * width):
            blocks += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]  # fmt: skip
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SequenceLSTM(nn.Module):
    """LSTM over a clip's VGGish embeddings; the last real step's hidden state is classified."""

    def __init__(self, n_classes: int, layers: int, hidden: int, dropout: float = 0.0, size: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(size, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.lstm(x)
        if lengths is None:
            return self.head(out[:, -1])
        last = (lengths.clamp(min=1) - 1).to(out.device)
        return self.head(out[torch.arange(len(out), device=out.device), last])


class SequenceLogistic(nn.Module):
    """Multinomial logistic regression over a clip's flattened sequence of embeddings."""

    def __init__(self, n_classes: int, steps: int, size: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(steps * size, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MoodNet(nn.Module):
    """A net plus the input standardisation learnt on its training set; sequence nets also take lengths."""

    def __init__(self, net: nn.Module, mean: float, std: float, sequence: bool) -> None:
        super().__init__()
        self.net = net
        self.sequence = sequence
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        if not self.sequence:
            return self.net((x.float() - self.mean) / self.std)
        if lengths is None:  # padding steps are all-zero rows; a real dequantized embedding never is
            lengths = (x != 0).any(dim=-1).sum(dim=1)
        return self.net((x.float() - self.mean) / self.std, lengths)

    def drop_auxiliary_heads(self) -> None:
        """GoogLeNet's auxiliary classifiers serve training only."""
        if isinstance(self.net, torchvision.models.GoogLeNet):
            self.net.aux_logits, self.net.aux1, self.net.aux2 = False, None, None


def one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution taking one input channel (a log-mel image instead of RGB)."""
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


def build_net(arch: str, n_classes: int, cfg: ArchConfig, sequence_length: int) -> nn.Module:
    """A freshly initialised net (seed torch first for reproducible weights)."""
    models = torchvision.models
    if arch in ("resnet50", "resnet152"):
        net = getattr(models, arch)(weights=None)
        net.conv1 = one_channel_conv(net.conv1)
        net.fc = nn.Linear(net.fc.in_features, n_classes)
    elif arch in ("vgg11", "vgg19"):
        net = getattr(models, arch)(weights=None)
        net.features[0] = one_channel_conv(net.features[0])
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, n_classes)
    elif arch == "googlenet":
        net = models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=False,
                               num_classes=n_classes)  # fmt: skip
        net.conv1.conv = one_channel_conv(net.conv1.conv)
    elif arch == "small_cnn":
        net = SmallCNN(n_classes, cfg.dropout)
    elif arch in ("lstm1", "lstm3"):
        net = SequenceLSTM(n_classes, int(arch[-1]), cfg.hidden, cfg.dropout)
    elif arch == "logreg":
        net = SequenceLogistic(n_classes, sequence_length)
    else:
        raise ValueError(f"{arch} is not a torch architecture")
    return net


def load_pretrained(net: nn.Module, cfg: ArchConfig, root: Path) -> str:
    """Load cfg.weights into the net where shapes allow; returns the weights kind for the run's tags.

    RGB first-layer kernels are summed over colour into one channel; the classifier, sized for
    another label set, keeps its fresh initialisation.
    """
    if cfg.weights is None:
        return "random-init"
    path = fetch(cfg.weights, root)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    loaded = {}
    for key, value in state.items():
        if key not in own:
            continue
        if value.ndim == 4 and value.shape[1] == 3 and own[key].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape == own[key].shape:
            loaded[key] = value
    net.load_state_dict(loaded, strict=False)
    log.info("pretrained weights %s: %d of %d tensors loaded", path.name, len(loaded), len(own))
    return f"pretrained:{path.name}"


def logits_of(output: torch.Tensor | tuple) -> torch.Tensor:
    """The main head's logits (GoogLeNet returns its auxiliary heads too while training)."""
    return output[0] if isinstance(output, tuple) else output


def training_loss(output: torch.Tensor | tuple, target: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    if isinstance(output, tuple):  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
        main, *aux = output
        return criterion(main, target) + GOOGLENET_AUX_WEIGHT * sum(criterion(a, target) for a in aux if a is not None)
    return criterion(output, target)
