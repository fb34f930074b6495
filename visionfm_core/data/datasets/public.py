"""The eight public multi-class datasets the original VisionFM released fine-tuned models for, in RETFound's
benchmark layout (``ROOT/<dataset>/{train,val,test}/<class folder>/``).

Class order is the original's: output k of a released model means ``class_names[k]`` here (the order its inference
script lists the class folders; RETFound's folders carry a/b/c/... prefixes that sort the same way, JSIEC's do not).
A class folder is matched to its class by its normalised name (:func:`match_class_folder`), so ``anodr``,
``a_no_dr``, ``eproDR`` and ``0.0.Normal`` find their class whatever prefix or case the copy uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PublicDataset", "PUBLIC_DATASETS", "get_public_dataset", "normalise_folder_name", "match_class_folder",
           "order_class_folders"]


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
        folders: the class folders the original's inference script lists, in output order (RETFound's names).
    """

    name: str
    title: str
    modality: str
    class_names: tuple[str, ...]
    finetune_epochs: int = 100
    folder_aliases: tuple[tuple[str, ...], ...] = ()
    folders: tuple[str, ...] = ()

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

# the folder lists of the original's inference script (RETFound's layout), class 0 first
_DR_FOLDERS = ("anodr", "bmilddr", "cmoderatedr", "dseveredr", "eproliferativedr")
_IDRID_FOLDERS = ("anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR")

PUBLIC_DATASETS: dict[str, PublicDataset] = {d.name: d for d in (
    PublicDataset("idrid", "IDRiD", "Fundus", _DR, 5, _DR_ALIASES, _IDRID_FOLDERS),
    PublicDataset("messidor2", "MESSIDOR-2", "Fundus", _DR, 5, _DR_ALIASES, _DR_FOLDERS),
    PublicDataset("aptos2019", "APTOS-2019", "Fundus", _DR, 5, _DR_ALIASES, _DR_FOLDERS),
    PublicDataset("papila", "PAPILA", "Fundus", ("normal", "suspect_glaucoma", "glaucoma"),
                  folders=("anormal", "bsuspectglaucoma", "cglaucoma")),
    PublicDataset("glaucoma_fundus", "Glaucoma Fundus", "Fundus", ("normal_control", "early_glaucoma",
                                                                    "advanced_glaucoma"),
                  folders=("anormal_control", "bearly_glaucoma", "cadvanced_glaucoma")),
    PublicDataset("jsiec", "JSIEC", "Fundus", _JSIEC, folders=_JSIEC),
    PublicDataset("retina", "Retina", "Fundus", ("normal", "cataract", "glaucoma", "retina_disease"),
                  folders=("anormal", "bcataract", "cglaucoma", "ddretina_disease")),
    PublicDataset("octid", "OCTID", "OCT", ("normal", "armd", "csr", "diabetic_retinopathy", "macular_hole"),
                  folder_aliases=(("normal",), ("amd",), (), ("dr",), ("mh",)),
                  folders=("ANormal", "ARMD", "CSR", "Diabetic_retinopathy", "Macular_Hole")),
)}


def get_public_dataset(name: str) -> PublicDataset:
    key = name.lower().replace("-", "").replace(" ", "_")
    if key not in PUBLIC_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; the public datasets are {', '.join(PUBLIC_DATASETS)}")
    return PUBLIC_DATASETS[key]


def normalise_folder_name(folder: str) -> str:
    """A class folder's name for matching: lower case, letters and digits only (``"b_Mild DR"`` -> ``"bmilddr"``)."""
    return re.sub(r"[^a-z0-9]", "", folder.lower())


def _candidates(dataset: PublicDataset) -> list[set[str]]:
    """Per class index, the normalised folder names that mean it: the original's folder, the class name, aliases."""
    out = []
    for k, name in enumerate(dataset.class_names):
        names = {normalise_folder_name(name)}
        if k < len(dataset.folders):
            names.add(normalise_folder_name(dataset.folders[k]))
        if k < len(dataset.folder_aliases):
            names.update(normalise_folder_name(a) for a in dataset.folder_aliases[k])
        out.append(names)
    return out


def match_class_folder(dataset: PublicDataset | str, folder: str) -> int:
    """The class index (the original's output index) of a class folder of `dataset`, e.g. ``"bmilddr"`` -> 1.

    A folder matches a class when its normalised name is one of the class's names (the original's folder, the class
    name, an alias), or is one once a single leading sorting letter is removed (``"cglaucoma"``, ``"e_pdr"``).
    Raises ValueError naming the folder and the dataset's classes when it matches none.
    """
    ds = get_public_dataset(dataset) if isinstance(dataset, str) else dataset
    key = normalise_folder_name(folder)
    candidates = _candidates(ds)
    for name in (key, key[1:] if key[:1].isalpha() else None):
        hits = [k for k, names in enumerate(candidates) if name and name in names]
        if len(hits) == 1:
            return hits[0]
    expected = ", ".join(ds.folders or ds.class_names)
    raise ValueError(f"class folder {folder!r} matches no class of {ds.title}: its classes are "
                     f"{', '.join(f'{k} {c}' for k, c in enumerate(ds.class_names))} (the original's folders: "
                     f"{expected}). Rename the folder, or leave it out of the dataset.")


def order_class_folders(dataset: PublicDataset | str, folders: list[str], where: str = "") -> list[str]:
    """The class folders found for `dataset`, in the original's class order (one per class).

    Raises ValueError naming `where` (the folder holding them) for a folder that matches no class, two folders of
    one class, or a class without a folder."""
    ds = get_public_dataset(dataset) if isinstance(dataset, str) else dataset
    place = f" in {where}" if where else ""
    found: dict[int, str] = {}
    for folder in folders:
        try:
            k = match_class_folder(ds, folder)
        except ValueError as e:
            raise ValueError(f"{where}: {e}" if where else str(e)) from None
        if k in found:
            raise ValueError(f"class folders {found[k]!r} and {folder!r}{place} are both class {k} "
                             f"({ds.class_names[k]}) of {ds.title}: keep one.")
        found[k] = folder
    missing = [f"{k} {c}" for k, c in enumerate(ds.class_names) if k not in found]
    if missing:
        raise ValueError(f"{ds.title} has {ds.num_classes} classes, but no class folder{place} matches "
                         f"{', '.join(missing)}: the original's models have one output per class, so every class "
                         "needs its folder.")
    return [found[k] for k in range(ds.num_classes)]
