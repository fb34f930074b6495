"""The eight public multi-class datasets the original VisionFM released fine-tuned models for, in RETFound's
benchmark layout (``ROOT/<dataset>/{train,val,test}/<class folder>/``).

Class order is the original's: output k of a released model means ``class_names[k]`` here (the order its inference
script lists the class folders; RETFound's folders carry a/b/c/... prefixes that sort the same way, JSIEC's do not).
A class folder is matched to its class by its normalised name, so ``anodr``, ``a_no_dr`` and ``0.0.Normal`` find
their class whatever prefix or case the copy uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PublicDataset", "PUBLIC_DATASETS", "get_public_dataset", "normalise_folder_name"]


@dataclass(frozen=True)
class PublicDataset:
    """One public dataset of the benchmark.

    Args:
        name: the id used by `visionfm import-weights --dataset` and `visionfm benchmark` (lower case).
        title: the dataset's published name.
        modality: the VisionFM modality of its images.
        class_names: the classes in the original's output order.
        finetune_epochs: epochs of the original's fine-tuning recipe (5 for the three DR datasets, which overfit
            when longer; 100 otherwise).
        folder_aliases: extra normalised folder names per class index, for copies whose folders are named otherwise.
    """

    name: str
    title: str
    modality: str
    class_names: tuple[str, ...]
    finetune_epochs: int = 100
    folder_aliases: tuple[tuple[str, ...], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_DR = ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")
_DR_ALIASES = (("nodr", "normal"), ("mild", "milddr", "mildnpdr"), ("moderate", "moderatedr", "moderatenpdr"),
               ("severe", "severedr", "severenpdr"), ("proliferative", "proliferativedr", "pdr"))
# JSIEC: its 39 class folders, class 0 to 38, in the order the original's script lists them
_JSIEC = ("0.0.Normal", "20.Massive hard exudates", "0.1.Tessellated fundus", "21.Yellow-white spots-flecks",
          "0.2.Large optic cup", "22.Cotton-wool spots", "0.3.DR1", "23.Vessel tortuosity", "1.0.DR2",
          "24.Chorioretinal atrophy-coloboma", "1.1.DR3", "25.Preretinal hemorrhage", "10.0.Possible glaucoma",
          "26.Fibrosis", "10.1.Optic atrophy", "27.Laser Spots", "11.Severe hypertensive retinopathy",
          "28.Silicon oil in eye", "12.Disc swelling and elevation", "29.0.Blur fundus without PDR",
          "13.Dragged Disc", "29.1.Blur fundus with suspected PDR", "14.Congenital disc abnormality", "3.RAO",
          "15.0.Retinitis pigmentosa", "4.Rhegmatogenous RD", "15.1.Bietti crystalline dystrophy", "5.0.CSCR",
          "16.Peripheral retinal degeneration and break", "5.1.VKH disease", "17.Myelinated nerve fiber",
          "6.Maculopathy", "18.Vitreous particles", "7.ERM", "19.Fundus neoplasm", "8.MH", "2.0.BRVO",
          "9.Pathological myopia", "2.1.CRVO")

PUBLIC_DATASETS: dict[str, PublicDataset] = {d.name: d for d in (
    PublicDataset("idrid", "IDRiD", "Fundus", _DR, 5, _DR_ALIASES),
    PublicDataset("messidor2", "MESSIDOR-2", "Fundus", _DR, 5, _DR_ALIASES),
    PublicDataset("aptos2019", "APTOS-2019", "Fundus", _DR, 5, _DR_ALIASES),
    PublicDataset("papila", "PAPILA", "Fundus", ("normal", "suspect_glaucoma", "glaucoma")),
    PublicDataset("glaucoma_fundus", "Glaucoma Fundus", "Fundus", ("normal_control", "early_glaucoma",
                                                                    "advanced_glaucoma")),
    PublicDataset("jsiec", "JSIEC", "Fundus", _JSIEC),
    PublicDataset("retina", "Retina", "Fundus", ("normal", "cataract", "glaucoma", "retina_disease")),
    PublicDataset("octid", "OCTID", "OCT", ("normal", "armd", "csr", "diabetic_retinopathy", "macular_hole")),
)}


def get_public_dataset(name: str) -> PublicDataset:
    key = name.lower().replace("-", "").replace(" ", "_")
    if key not in PUBLIC_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; the public datasets are {', '.join(PUBLIC_DATASETS)}")
    return PUBLIC_DATASETS[key]


def normalise_folder_name(folder: str) -> str:
    """A class folder's name for matching: lower case, letters and digits only (``"b_Mild DR"`` -> ``"bmilddr"``)."""
    return re.sub(r"[^a-z0-9]", "", folder.lower())
