"""Training: the pipeline (snapshot -> matrix -> split -> tune -> refit -> register), tuning, retraining."""

from scalerec.training.pipeline import ProgressEvent, TrainOptions, TrainResult, train
from scalerec.training.retrain import RetrainDecision, TrainingSchedule, run_training_subprocess, should_retrain

__all__ = [
    "ProgressEvent",
    "RetrainDecision",
    "TrainOptions",
    "TrainResult",
    "TrainingSchedule",
    "run_training_subprocess",
    "should_retrain",
    "train",
]
