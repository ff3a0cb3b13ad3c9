"""Training: strategy choice, optimizer and schedules, callbacks, the `train()` run.

`maskspine.training.trainer.train` runs it (that module imports TensorFlow; this one does not).
"""


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (the message says which)."""
