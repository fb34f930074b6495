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
