"""Training: strategy choice, optimizer and schedules, callbacks, the `train()` run.

`maskspine.training.trainer.train` runs it (that module imports TensorFlow; this one does not).
"""

from maskspine.errors import TrainingError

__all__ = ["TrainingError"]
