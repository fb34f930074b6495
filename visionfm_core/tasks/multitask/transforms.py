"""Multi-disease labels: the (9,) label vector with unknown labels masked."""

from __future__ import annotations

import numbers
from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from visionfm_core.data.datalist import load_datalist
from visionfm_core.data.targets import MISSING_LABEL, datalist_name, entry_image
from visionfm_core.tasks.multitask.head import GRADE_CLASSES, GRADE_TASK, MULTITASK_TASKS

__all__ = ["load_multitask_datalist", "MultiTaskLabelsd"]


def _task_label(value: object, task: str, where: str) -> int:
    """-1 for null, else the validated integer label of `task`."""
    if value is None:
        return MISSING_LABEL
    if task == GRADE_TASK:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer() \
            and 0 <= value < len(GRADE_CLASSES)
        if not ok:
            raise ValueError(f"{where}: label {task}={value!r} must be an integer DR grade 0-{len(GRADE_CLASSES) - 1} "
                             "or null.")
        return int(value)
    if isinstance(value, bool):  # true/false is a natural way to write a binary label
        return int(value)
    if not (isinstance(value, numbers.Real) and value in (0, 1)):
        raise ValueError(f"{where}: label {task}={value!r} must be 0, 1 or null.")
    return int(value)


def _multitask_row(labels: object, tasks: Sequence[str], where: str) -> list[int]:
    if labels is None:
        return [MISSING_LABEL] * len(tasks)
    if not isinstance(labels, dict):
        raise ValueError(f"{where}: \"labels\" must be an object {{task: label}}, got {labels!r}.")
    unknown = sorted(set(labels) - set(tasks))
    if unknown:
        raise ValueError(f"{where}: unknown task name(s) {unknown} in \"labels\"; the tasks are {list(tasks)}.")
    return [_task_label(labels.get(t), t, where) for t in tasks]


def load_multitask_datalist(datalist, split: str, tasks: Sequence[str] = MULTITASK_TASKS, **kwargs) -> list[dict]:
    """:func:`load_datalist` plus a check of every entry's ``"labels"``: known task names only, the grade in 0-4,
    binary labels 0/1 (or true/false), null or absent for unknown. In the training split an entry must have at
    least one known label. Errors name the datalist, split, entry index and image."""
    entries = load_datalist(datalist, split, **kwargs)
    for i, entry in enumerate(entries):
        where = f"Datalist {datalist_name(datalist)}, {split!r} entry {i} ({entry['image']})"
        row = _multitask_row(entry.get("labels"), tasks, where)
        if split == "training" and all(v == MISSING_LABEL for v in row):
            raise ValueError(f"{where}: no known label for any task ({list(tasks)}); a training image needs one.")
    return entries


class MultiTaskLabelsd(MapTransform):
    """Pop the ``"labels"`` object of an entry and put a float32 (T,) tensor in `tasks` order under `label_key`
    (what the trainer's loss and the metrics read), -1 where unknown. An entry without labels gets all -1, so
    labelled and unlabelled entries batch together. Bad labels raise naming the image."""

    def __init__(self, keys: KeysCollection = "labels", tasks: Sequence[str] = MULTITASK_TASKS,
                 label_key: str = "label", image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.tasks = tuple(tasks)
        self.label_key, self.image_key = label_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if isinstance(d.get(self.label_key), torch.Tensor):
            return d  # already converted
        values = [d.pop(key, None) for key in self.keys]
        where = f"image {entry_image(d, self.image_key)}"
        d[self.label_key] = torch.tensor(_multitask_row(values[0], self.tasks, where), dtype=torch.float32)
        return d
