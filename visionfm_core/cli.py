"""The `visionfm` command (python-fire): import weights, prepare datalists, run the demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fire

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def _is_original_release(raw, source: str) -> bool:
    # the original VisionFM files: training checkpoints (teacher/student) or fine-tuned ones, named VFM_*
    keys = set(raw) if isinstance(raw, dict) else set()
    return bool(keys & {"teacher", "student", "visionfm_state_dict"}) or Path(source).name.startswith("VFM_")


class PrepareData:
    """Turn a dataset layout into a MONAI datalist JSON."""

    def retfound(self, root: str, out: str = "datalist.json") -> None:
        """RETFound/VisionFM folders ROOT/{train,val,test}/<class>/ -> datalist with class indices."""
        from .data import retfound_to_datalist

        datalist = retfound_to_datalist(root, out=out)
        counts = {k: len(v) for k, v in datalist.items() if isinstance(v, list) and k != "class_names"}
        print(f"wrote {out}: {counts}, classes {datalist['class_names']}")

    def drive(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0) -> None:
        """DRIVE ROOT/{training,test}/{images,1st_manual,mask}/ -> vessel datalist (validation carved from training)."""
        from .data.converters import drive_to_datalist

        _report(out, drive_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed))

    def stare(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
              seed: int = 0) -> None:
        """STARE ROOT/{stare-images,labels-ah}/ -> vessel datalist of the annotated photos (splits carved)."""
        from .data.converters import stare_to_datalist

        _report(out, stare_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                       seed=seed))

    def chase(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
              seed: int = 0) -> None:
        """CHASE_DB1 ROOT/Image_NN[LR].jpg + _1stHO.png -> vessel datalist (splits carved per child)."""
        from .data.converters import chase_to_datalist

        _report(out, chase_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                       seed=seed))

    def hrf(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
            seed: int = 0) -> None:
        """HRF ROOT/{images,manual1,mask}/ -> vessel datalist (splits carved)."""
        from .data.converters import hrf_to_datalist

        _report(out, hrf_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                     seed=seed))

    def idrid_landmarks(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0) -> None:
        """IDRiD 'C. Localization' (ROOT is it or its parent) -> optic disc + fovea landmark datalist."""
        from .data.converters import idrid_landmarks_to_datalist

        _report(out, idrid_landmarks_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed))

    def landmark_csv(self, csv: str, image_dir: str | None = None, out: str = "datalist.json",
                     names: list[str] | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                     seed: int = 0) -> None:
        """A CSV image,<name>_x,<name>_y,... (optional split column) -> landmark datalist; images relative to
        IMAGE_DIR (default: the CSV's folder)."""
        from .data.converters import landmark_csv_to_datalist

        if isinstance(names, str):  # fire passes --names od as a string and --names od,fovea as a tuple
            names = names.split(",")
        _report(out, landmark_csv_to_datalist(csv, image_dir=image_dir, out=out, names=names,
                                              val_fraction=val_fraction, test_fraction=test_fraction, seed=seed))


def _report(out: str, datalist: dict) -> None:
    counts = {k: len(datalist[k]) for k in ("training", "validation", "test")}
    names = f", landmarks {datalist['landmark_names']}" if "landmark_names" in datalist else ""
    print(f"wrote {out}: {counts}{names}")


class Commands:
    """VisionFM ophthalmic foundation models for MONAI."""

    def __init__(self):
        self.prepare_data = PrepareData()

    def modalities(self) -> None:
        """List the 8 modalities with their normalisation."""
        from .modalities import MODALITIES

        for m in MODALITIES.values():
            print(f"{m.name:<11} {m.description:<40} mean={m.mean} std={m.std}")

    def import_weights(self, src: str, modality: str, out: str, checkpoint_key: str = "teacher",
                       arch: str = "vit_base", patch_size: int = 16) -> None:
        """Check SRC (an original VisionFM, iBOT/DINO or fine-tuned checkpoint) against the encoder and write
        the bare backbone with a header (modality, source, sha256, licence) to OUT for the bundles to use."""
        from .modalities import get_modality
        from .models import build_encoder
        from .weights import ORIGINAL_LICENCE, load_encoder_weights, read_checkpoint, save_encoder_weights, sha256sum

        modality = get_modality(modality).name
        raw = read_checkpoint(src)
        encoder = build_encoder(arch, patch_size)
        report = load_encoder_weights(encoder, raw, checkpoint_key)
        licence = ORIGINAL_LICENCE if _is_original_release(raw, src) else None
        save_encoder_weights(encoder, out, modality=modality, arch=arch, patch_size=patch_size,
                             source=os.path.basename(src), sha256=sha256sum(src), checkpoint_key=report.entry,
                             licence=licence)
        print(report)
        print(f"wrote {out} ({modality}, {arch}/{patch_size}{', licence: ' + licence if licence else ''})")

    def demo(self, out: str = "demo_output", epochs: int = 3, arch: str = "vit_base", per_class: int = 8,
             bundle: str = str(BUNDLES_DIR / "fundus_dr_classification")) -> None:
        """Train the fundus DR bundle briefly on built-in graded phantoms, evaluate it on their test split and
        grade the real fundus photo that ships with scikit-image. Everything is written under OUT."""
        from .demo import run_demo

        run_demo(out=out, epochs=epochs, arch=arch, per_class=per_class, bundle=bundle)


def main(argv: list[str] | None = None) -> None:
    fire.Fire(Commands, command=argv if argv is not None else sys.argv[1:], name="visionfm")


if __name__ == "__main__":
    main()
