"""Training: presets of the paper's recipe, the resumable loop, checkpoints, metrics (cli -> train -> models)."""

from .config import PRESETS, ConfigError, TrainConfig, resolve_config
from .trainer import TrainingError, evaluate, train

__all__ = ["PRESETS", "ConfigError", "TrainConfig", "TrainingError", "evaluate", "resolve_config", "train"]
