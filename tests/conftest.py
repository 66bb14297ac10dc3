import pytest
import torch


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: inputs are random but reproducible."""
    return torch.Generator().manual_seed(20261125)


def mlp(inputs: int, hidden: int, classes: int, *, bias: bool = True, dtype=torch.float64, seed: int = 0):
    """fc -> ReLU -> out; the analysed layer is '1' (the ReLU)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden, bias=bias), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes, bias=bias)).to(dtype)


def small_cnn(channels: int = 6, classes: int = 5, dtype=torch.float64, seed: int = 0):
    """conv -> ReLU (layer '1', a conv cut point) -> conv -> ReLU (layer '3') -> pool -> fc."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * channels, classes),
    ).to(dtype)
