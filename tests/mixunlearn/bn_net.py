"""A small CNN with batch norm for the trainer's tests (the bench's ResNet-18 has batch norm too)."""
import torch
from torch import nn


class BNNet(nn.Module):
    """2-d and 1-d batch norm, each after a layer without bias, as in ResNet-18 (a bias before
    batch norm gets a zero gradient, whose rounding noise Adam would scale up); ``block``
    feeds the MixBlock."""

    feature_layer = "block"

    def __init__(self, in_channels=1, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def bn_model(seed=0, in_channels=1):
    """A BNNet whose running statistics are those of a trained model, not the initial 0 and 1."""
    torch.manual_seed(seed)
    model = BNNet(in_channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model
