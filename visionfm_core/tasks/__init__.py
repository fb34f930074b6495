"""The task families, one package each: its head or network, metrics, output writers and family-specific transforms.

`bundle_family(bundle_dir)` says which family a bundle is (from its metadata.json); `FAMILIES` lists them all.
"""

from visionfm_core.tasks.family import FAMILIES, Family, FamilyError, bundle_family, get_family, register_family

# Importing a family registers it (and its heads): every family is known once this package is imported.
from visionfm_core.tasks import (  # noqa: E402  (isort: skip)
    classification,
    forecasting,
    fusion,
    generation,
    landmarks,
    multitask,
    oct_layers,
    pretraining,
    regression,
    segmentation,
    segmentation3d,
    volume_classification,
)

__all__ = ["FAMILIES", "Family", "FamilyError", "bundle_family", "get_family", "register_family", "classification",
           "forecasting", "fusion", "generation", "landmarks", "multitask", "oct_layers", "pretraining", "regression",
           "segmentation", "segmentation3d", "volume_classification"]
