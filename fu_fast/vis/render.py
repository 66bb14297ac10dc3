"""Feature visualisation (Olah et al. 2017, "Feature Visualization"; the lucid recipe), in torch.

An image is parameterised by its colour-decorrelated, 1/frequency-scaled Fourier spectrum and
optimised with Adam to maximise the post-ReLU activation of one unit, seen through random
padding, jitter, scaling and rotation (docs/definitions.md, the Table 2 test). Several units
are optimised at once as a batch, one image per unit; images never interact (the model runs in
eval mode, so batch norm uses its running statistics), so a unit's image does not depend on which
other units share its batch except through the random draws.

Objective: the unit is a channel of the layer's output and its activation is the *mean over the
channel's spatial map* (lucid's ``objectives.channel``, which is what "a unit" meant in the
authors' lucid-based code); ``objective="center"`` takes the centre position instead (lucid's
``neuron``). A fully connected layer's unit is its feature. The analysed layers of the zoo are
post-ReLU outputs (ResNet block outputs after add and ReLU, Inception module outputs, which
concatenate ReLU branches), so the activation maximised is the post-ReLU one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FuFastError
from ..hooks import forward_hooks

# lucid/optvis/param/color.py: the square root (via SVD) of the colour covariance of ImageNet
# pixels, rows = output RGB. Multiplying three decorrelated channels by it gives natural colour
# statistics; any square root of the covariance decorrelates equally well (a Cholesky factor
# would too), lucid's numbers are used so images compare with lucid's.
COLOR_CORRELATION_SQRT = ((0.26, 0.09, 0.02),
                          (0.27, 0.00, -0.05),
                          (0.27, -0.09, 0.03))
# lucid scales the irfft output by 1/4 (its "magic constant"): it keeps the initial logits small,
# so the sigmoid starts in its linear range, and sets the effective step size of Adam at 0.05.
SPECTRUM_OUTPUT_SCALE = 0.25
OBJECTIVES = ("mean", "center")


def color_matrix() -> torch.Tensor:
    """lucid's colour correlation square root divided by its largest column norm (as lucid does),
    so no decorrelated channel is amplified."""
    m = torch.tensor(COLOR_CORRELATION_SQRT, dtype=torch.float64)
    return m / m.norm(dim=0).max()


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """1/frequency scale of the rfft2 coefficients (shape (height, width//2+1)); frequencies in
    cycles per pixel, floored at 1/max(height, width) so the DC term gets the lowest frequency's
    scale instead of an infinite one."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay_power


class FourierImage(nn.Module):
    """A batch of RGB images in [0, 1] parameterised by their decorrelated Fourier spectrum.

    image = sigmoid(C @ irfft2(scale * spectrum) / 4) with C the colour matrix, the irfft2
    orthonormal (lucid's sqrt(h*w) factor with TensorFlow's 1/(h*w) inverse), and ``spectrum``
    (real and imaginary parts, shape (batch, 3, h, w//2+1, 2)) the parameter. Gradient steps on
    the spectrum of a 1/f-scaled basis favour low frequencies, which is why the parameterisation
    yields natural-looking images instead of high-frequency adversarial patterns.
    """

    def __init__(self, batch: int, height: int, width: int | None = None, *, sd: float = 0.01,
                 decay_power: float = 1.0, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu"):
        super().__init__()
        width = height if width is None else width
        self.size = (height, width)
        self.register_buffer("scale", spectrum_scale(height, width, decay_power).float().to(device))
        self.register_buffer("color", color_matrix().float().to(device))
        init = torch.randn(batch, 3, height, width // 2 + 1, 2, generator=generator, device=device)
        self.spectrum = nn.Parameter(init * sd)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits())

    def logits(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") * SPECTRUM_OUTPUT_SCALE
        return torch.einsum("ck,bkhw->bchw", self.color, decorrelated)

    @torch.no_grad()
    def set_image(self, images: torch.Tensor) -> "FourierImage":
        """Set the spectrum so that ``forward()`` returns ``images`` (values strictly inside (0, 1);
        0 and 1 are clamped to 1e-6 from the edge, where the logit is finite)."""
        x = images.to(self.spectrum).clamp(1e-6, 1 - 1e-6)
        if x.shape != (self.spectrum.shape[0], 3, *self.size):
            raise FuFastError(f"images of shape {tuple(x.shape)} do not fit a FourierImage of "
                              f"{self.spectrum.shape[0]} images of 3x{self.size[0]}x{self.size[1]}")
        decorrelated = torch.einsum("ck,bkhw->bchw", torch.linalg.inv(self.color), torch.logit(x))
        spectrum = torch.fft.rfft2(decorrelated / SPECTRUM_OUTPUT_SCALE, norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(spectrum))
        return self


@dataclass(frozen=True)
class Transforms:
    """Random transforms of each step (lucid's standard_transforms at 224 pixels), sizes in pixels of
    a 224-pixel image and scaled with the image side so small images are not swamped.

    pad: random padding: a border of uniform noise (lucid's pad(..., constant_value="uniform")), so
        the border carries no usable feature. jitter: a random translation of up to this many
        pixels in each direction (lucid's two jitters, 8 and 4). scale: zoom factor drawn uniformly
        in [1 - scale, 1 + scale]. degrees: rotation drawn uniformly in [-degrees, degrees].
    """
    pad: float = 12
    jitter: float = 12
    scale: float = 0.1
    degrees: float = 10

    def pixels(self, size: int) -> tuple[int, float]:
        factor = size / 224
        return max(1, round(self.pad * factor)), self.jitter * factor

    def to_dict(self) -> dict:
        return {"pad": self.pad, "jitter": self.jitter, "scale": self.scale, "degrees": self.degrees,
                "reference_size": 224}


def random_transform(images: torch.Tensor, transforms: Transforms, generator: torch.Generator) -> torch.Tensor:
    """Pad with noise, then one affine map per image (translation, zoom, rotation about the
    centre) resampled bilinearly; the result has the padded size. Differentiable in ``images``."""
    b, c, h, w = images.shape
    pad, jitter = transforms.pixels(max(h, w))
    device = images.device
    noise = torch.rand(b, c, h + 2 * pad, w + 2 * pad, generator=generator, device=device)
    inside = torch.zeros_like(noise[:1, :1])
    inside[..., pad:pad + h, pad:pad + w] = 1
    x = noise * (1 - inside) + F.pad(images, (pad, pad, pad, pad))

    def uniform(low, high):
        return low + (high - low) * torch.rand(b, generator=generator, device=device)

    zoom = uniform(1 - transforms.scale, 1 + transforms.scale)
    angle = uniform(-transforms.degrees, transforms.degrees) * (math.pi / 180)
    hp, wp = h + 2 * pad, w + 2 * pad
    # affine_grid maps output to input coordinates in [-1, 1]; a pixel is 2/side of them.
    shift_x = uniform(-jitter, jitter) * 2 / wp
    shift_y = uniform(-jitter, jitter) * 2 / hp
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [b, c, hp, wp], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class _Stop(Exception):
    """Raised by the capture hook: nothing after the visualised layer needs computing."""


class LayerProbe:
    """Runs ``model`` up to module ``layer`` and returns that module's output (the rest of the
    forward pass is skipped, which makes early layers cheap)."""

    def __init__(self, model: nn.Module, layer: str):
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            raise FuFastError(f"unknown layer {layer!r} of {type(model).__name__}")
        self.model, self.module, self.layer = model, modules[layer], layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(_module, _inputs, output):
            captured.append(output)
            raise _Stop

        try:
            with forward_hooks([(self.module, hook)]):
                self.model(x)
        except _Stop:
            pass
        if not captured or not isinstance(captured[0], torch.Tensor) or captured[0].dim() not in (2, 4):
            raise FuFastError(f"layer {self.layer!r} does not output a (N, C) or (N, C, H, W) tensor")
        return captured[0]


def unit_activation(output: torch.Tensor, units: torch.Tensor, objective: str) -> torch.Tensor:
    """Activation of unit ``units[i]`` in row i of a layer output: the channel's spatial mean, or
    its centre position; a feature of an (N, C) output."""
    rows = torch.arange(len(units), device=output.device)
    picked = output[rows, units]
    if picked.dim() == 1:
        return picked
    if objective == "center":
        return picked[:, picked.shape[1] // 2, picked.shape[2] // 2]
    return picked.mean(dim=(1, 2))


@dataclass
class Visualization:
    images: torch.Tensor        # (units, 3, size, size) in [0, 1], on the CPU
    units: list[int]
    start_activation: list[float]   # the unit's activation on the starting image
    final_activation: list[float]   # ... on the optimised image (both without transforms)


def visualize(model: nn.Module, layer: str, units: Sequence[int], *, steps: int = 256, image_size: int = 224,
              lr: float = 0.05, seed: int = 0, mean: Sequence[float] = (0.485, 0.456, 0.406),
              std: Sequence[float] = (0.229, 0.224, 0.225), objective: str = "mean",
              transforms: Transforms = Transforms(), device: torch.device | str | None = None,
              batch_size: int | None = None, on_step: Callable[[int], None] | None = None) -> Visualization:
    """Images maximising each unit of ``layer`` (one per unit), ``steps`` Adam steps each.

    ``mean``/``std``: the input normalisation of the model's training data (ImageNet's by
    default); the optimised image lives in [0, 1] pixel space. ``batch_size`` units are optimised
    together (all by default). ``on_step(k)`` is called after every step with the number of
    steps done so far over all batches. Seeded: the same arguments give the same images on
    the same device.
    """
    if objective not in OBJECTIVES:
        raise FuFastError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if steps < 0 or image_size < 1:
        raise FuFastError(f"steps must be >= 0 and image_size >= 1, got {steps} and {image_size}")
    units = [int(u) for u in units]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    probe = LayerProbe(model, layer)
    was_training = model.training
    model.eval()
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def activation(images, chosen):
        return unit_activation(probe((images - mean_t) / std_t), chosen, objective)

    batch_size = batch_size or max(1, len(units))
    images, start, final = [], [], []
    done = 0
    try:
        for first in range(0, len(units), batch_size):
            chunk = units[first:first + batch_size]
            generator = torch.Generator(device=device)
            generator.manual_seed(seed * 1_000_003 + first)
            param = FourierImage(len(chunk), image_size, generator=generator, device=device)
            chosen = torch.tensor(chunk, device=device)
            with torch.no_grad():
                initial = activation(param(), chosen)
                channels = probe((param() - mean_t) / std_t).shape[1]
            if max(chunk) >= channels or min(chunk) < 0:
                raise FuFastError(f"layer {layer!r} has {channels} units; unit {max(chunk)} does not exist")
            optimizer = torch.optim.Adam(param.parameters(), lr=lr)
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                seen = random_transform(param(), transforms, generator)
                # Sum, not mean: each image's gradient is then that of its own unit alone.
                loss = -activation(seen, chosen).sum()
                loss.backward(inputs=[param.spectrum])   # no weight gradients are computed
                optimizer.step()
                done += 1
                if on_step is not None:
                    on_step(done)
            with torch.no_grad():
                result = param()
                images.append(result.detach().cpu())
                start.extend(initial.cpu().tolist())
                final.extend(activation(result, chosen).cpu().tolist())
    finally:
        model.train(was_training)
    return Visualization(torch.cat(images) if images else torch.empty(0, 3, image_size, image_size),
                         units, start, final)
