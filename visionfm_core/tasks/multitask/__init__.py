"""VisionFM's multi-disease head: the DR grade and eight binary diseases in 13 outputs, unknown labels masked."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.multitask.head import (
    BINARY_TASKS,
    DEFAULT_BINARY_WEIGHTS,
    GRADE_CLASSES,
    GRADE_TASK,
    MULTITASK_OUTPUTS,
    MULTITASK_TASKS,
    MultiTaskHead,
    MultiTaskLoss,
    MultiTaskProbabilitiesd,
    multitask_probabilities,
)
from visionfm_core.tasks.multitask.metrics import MultiTaskMetric, multitask_metrics
from visionfm_core.tasks.multitask.transforms import MultiTaskLabelsd, load_multitask_datalist
from visionfm_core.tasks.multitask.writer import MultiTaskWriter

__all__ = [
    "FAMILY",
    "GRADE_TASK",
    "GRADE_CLASSES",
    "BINARY_TASKS",
    "MULTITASK_TASKS",
    "MULTITASK_OUTPUTS",
    "DEFAULT_BINARY_WEIGHTS",
    "MultiTaskHead",
    "MultiTaskLoss",
    "multitask_probabilities",
    "MultiTaskProbabilitiesd",
    "load_multitask_datalist",
    "MultiTaskLabelsd",
    "multitask_metrics",
    "MultiTaskMetric",
    "MultiTaskWriter",
]

FAMILY = register_family(Family(
    "multitask",
    "VisionFM's multi-disease head: the DR grade and eight binary diseases in 13 outputs, unknown labels masked.",
    served_as="classification",
))
