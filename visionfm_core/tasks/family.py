"""Task families: one registry, and one way to ask what a bundle is.

Every bundle belongs to one family (classification, segmentation, forecasting, ...). The bundle generator records it
as `"family"` in the bundle's `configs/metadata.json`; the report, export, the MONAI Label app and the tests ask
`bundle_family(bundle_dir)` and read the answer's fields instead of keeping tables of their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Family", "FAMILIES", "register_family", "get_family", "bundle_family", "FamilyError"]


class FamilyError(ValueError):
    """A bundle whose family cannot be told, or a family name that is not registered."""


@dataclass(frozen=True)
class Family:
    """What the bundles of one task family share.

    Args:
        name: the id written to each bundle's metadata.json as "family" (and the folder under visionfm_core/tasks).
        summary: one line for listings and docs.
        spatial_dims: 2 for per-image bundles, 3 for volume bundles.
        weights: the trained file under the bundle's models/ that inference loads.
        task: whether inference writes task predictions; False for pretraining (embeddings) and generation (images).
        served_as: how the MONAI Label app serves the bundle's output ("classification", "segmentation",
            "landmarks", "regression", "embedding"), or "" when it does not serve the family.
    """

    name: str
    summary: str
    spatial_dims: int = 2
    weights: str = "model.pt"
    task: bool = True
    served_as: str = ""

    @property
    def model_card(self) -> Path:
        """The family's Markdown model-card template."""
        return Path(__file__).parent / self.name / "model_card.md"


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family to `FAMILIES` (each family's package does this on import); a name is registered once."""
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise FamilyError(f"family {family.name!r} is already registered differently")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise FamilyError(f"unknown task family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def bundle_family(bundle_dir: str | os.PathLike) -> Family:
    """The family of the bundle in `bundle_dir`, as its configs/metadata.json records it."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise FamilyError(f"{path} not found: {bundle_dir} is not a bundle folder") from None
    except json.JSONDecodeError as error:
        raise FamilyError(f"{path} is not valid JSON ({error})") from None
    name = metadata.get("family")
    if not name:
        raise FamilyError(f"{path} has no \"family\": regenerate the bundle with scripts/generate_bundles.py or add "
                          f"one of {', '.join(sorted(FAMILIES))}")
    try:
        return get_family(str(name))
    except FamilyError as error:
        raise FamilyError(f"{path}: {error}") from None
