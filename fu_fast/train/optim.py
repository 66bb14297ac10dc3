"""The paper's optimisers and learning-rate schedules, on torch.optim's own classes.

Schedules are strings, stepped once per epoch:
    constant          the learning rate never changes
    exp:G             multiply by G after every epoch              (AlexNet: exp:0.95)
    exp:G/E           multiply by G after every E epochs           (Inception: exp:0.94/2)
    step:E1,E2,...    multiply by 0.1 at each listed epoch         (ResNet56: step:91,136)
    step:E1,E2,...*G  the same with factor G
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FuFastError


@dataclass(frozen=True)
class Schedule:
    kind: str                      # "constant", "exp", "step"
    gamma: float = 1.0
    every: int = 1                 # exp: epochs between decays
    milestones: tuple[int, ...] = ()


def parse_schedule(text: str) -> Schedule:
    bad = FuFastError(f"bad schedule {text!r}: use constant, exp:G, exp:G/E, step:E1,E2 or step:E1,E2*G")
    kind, _, arg = str(text).partition(":")
    try:
        if kind == "constant" and not arg:
            return Schedule("constant")
        if kind == "exp":
            gamma, _, every = arg.partition("/")
            schedule = Schedule("exp", gamma=float(gamma), every=int(every) if every else 1)
            if not (0 < schedule.gamma <= 1) or schedule.every < 1:
                raise bad
            return schedule
        if kind == "step":
            epochs, _, gamma = arg.partition("*")
            milestones = tuple(int(e) for e in epochs.split(","))
            schedule = Schedule("step", gamma=float(gamma) if gamma else 0.1, milestones=milestones)
            if (not (0 < schedule.gamma <= 1) or any(m < 1 for m in milestones)
                    or list(milestones) != sorted(milestones)):
                raise bad
            return schedule
    except ValueError:
        raise bad from None
    raise bad


def build_optimizer(parameters, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd_momentum":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        # TensorFlow's Inception-v3 settings (decay 0.9, epsilon 1.0); TF adds epsilon inside
        # the square root, torch outside, which matters little at epsilon 1.0.
        return torch.optim.RMSprop(parameters, lr=lr, alpha=0.9, eps=1.0, momentum=momentum,
                                   weight_decay=weight_decay)
    raise FuFastError(f"unknown optimizer {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, text: str) -> torch.optim.lr_scheduler.LRScheduler:
    schedule = parse_schedule(text)
    if schedule.kind == "exp":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.every, gamma=schedule.gamma)
    if schedule.kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(schedule.milestones),
                                                    gamma=schedule.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
