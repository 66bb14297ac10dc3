"""Training the model zoo with the paper's settings, on CPU, one GPU, or many under torchrun.

    from fu_fast.train import TrainConfig, train, load_model
    record = train(TrainConfig("mlp", width=2.0), "runs/mlp-2")   # run.json, checkpoint.pt, model.pt
    model, info = load_model("runs/mlp-2")
"""

from .checkpoint import load_model, read_run
from .config import TrainConfig
from .loop import evaluate, train

__all__ = ["TrainConfig", "train", "evaluate", "load_model", "read_run"]
