"""The eight VisionFM imaging modalities: canonical names, aliases and normalisation.

The mean/std values are part of weight compatibility: each released encoder was pretrained on
images normalised with exactly these numbers (3 channels; grey modalities repeat one value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Modality", "MODALITIES", "get_modality", "modality_names"]


@dataclass(frozen=True)
class Modality:
    name: str
    description: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grey: bool  # acquired as a single channel; replicated to 3 channels for the encoder
    aliases: tuple[str, ...] = ()


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "Fundus",
            "colour fundus photograph",
            (0.423737496137619, 0.2609460651874542, 0.128403902053833),
            (0.29482534527778625, 0.20167365670204163, 0.13668020069599152),
            grey=False,
            aliases=("cfp", "colour_fundus", "color_fundus", "fundus_photo", "retina", "retinal_photo"),
        ),
        Modality(
            "OCT",
            "optical coherence tomography B-scan",
            (0.21091926, 0.21091926, 0.21091919),
            (0.17598894, 0.17598891, 0.17598893),
            grey=True,
            aliases=("oct_bscan", "optical_coherence_tomography"),
        ),
        Modality(
            "FFA",
            "fundus fluorescein angiography",
            (0.2020487, 0.20205145, 0.20201068),
            (0.17406046, 0.17404206, 0.17401208),
            grey=True,
            aliases=("fa", "fluorescein_angiography", "angiography"),
        ),
        Modality(
            "SlitLamp",
            "slit-lamp photograph",
            (0.5556667, 0.40288574, 0.38857886),
            (0.26516676, 0.23311588, 0.23903583),
            grey=False,
            aliases=("siltlamp", "slit", "anterior_segment"),
        ),
        Modality(
            "External",
            "external eye photograph",
            (0.4936253, 0.36324808, 0.25956994),
            (0.32001, 0.27109432, 0.21991591),
            grey=False,
            aliases=("external_eye", "eye_photo"),
        ),
        Modality(
            "Ultrasound",
            "ocular B-scan ultrasound",
            (0.05989236, 0.05978666, 0.056694973),
            (0.154277, 0.15504874, 0.14464583),
            grey=True,
            aliases=("us", "bscan", "b_scan", "ocular_ultrasound"),
        ),
        Modality(
            "UBM",
            "ultrasound biomicroscopy",
            (0.096110865,) * 3,
            (0.20977867,) * 3,
            grey=True,
            aliases=("ultrasound_biomicroscopy",),
        ),
        Modality(
            "MRI",
            "magnetic resonance imaging",
            (0.17368862,) * 3,
            (0.16198656,) * 3,
            grey=True,
            aliases=("mr", "orbit_mri"),
        ),
    )
}


def _key(name: str) -> str:
    # "Silt-Lamp", "slit_lamp", "SLIT LAMP" and "SlitLamp" all become "slitlamp"
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


_LOOKUP: dict[str, Modality] = {}
for _m in MODALITIES.values():
    for _alias in (_m.name, *_m.aliases):
        _LOOKUP[_key(_alias)] = _m


def modality_names() -> list[str]:
    return list(MODALITIES)


def get_modality(name: str | Modality) -> Modality:
    """Return the modality for a canonical name or alias (case-, space-, '-' and '_'-insensitive)."""
    if isinstance(name, Modality):
        return name
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        raise ValueError(
            f"Unknown modality {name!r}. Valid modalities: {', '.join(MODALITIES)} "
            "(aliases such as 'Silt-Lamp', 'slit_lamp', 'UltraSound', 'bscan', 'CFP' are accepted)."
        )
    return _LOOKUP[_key(name)]
