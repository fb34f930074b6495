"""The `visionfm` command (python-fire): import weights, prepare datalists, run the demo and the benchmark."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import fire

__all__ = ["Commands", "PrepareData", "main"]


def _is_original_release(raw, source: str) -> bool:
    # the original VisionFM files: training checkpoints (teacher/student) or fine-tuned ones, named VFM_*
    keys = set(raw) if isinstance(raw, dict) else set()
    return bool(keys & {"teacher", "student", "visionfm_state_dict"}) or Path(source).name.startswith("VFM_")


class PrepareData:
    """Turn a dataset layout into a MONAI datalist JSON."""

    def retfound(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0,
                 dataset: str | None = None) -> None:
        """RETFound/VisionFM folders ROOT/{train,val,test}/<class>/ -> datalist with class indices (validation
        carved from train, stratified, when there is no val/). --dataset aptos2019|idrid|messidor2|papila|
        glaucoma_fundus|jsiec|retina|octid: the folders are matched to that dataset's classes and labelled in the
        original VisionFM order, so label k is output k of its released model (a folder matching no class is
        refused); otherwise classes are the folder names, sorted."""
        from visionfm_core.data.datasets.classification import report_datalist, retfound_split_datalist

        report_datalist(out, retfound_split_datalist(root, out=out, val_fraction=val_fraction, seed=seed,
                                                     dataset=dataset))

    # Classification datasets (see visionfm_core/data/datasets/classification.py for each expected layout).
    # Carved splits are seeded, stratified by class and grouped by patient where the dataset has patient ids.

    def idrid_grading(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0,
                      task: str = "dr") -> None:
        """IDRiD 'B. Disease Grading' (ROOT is it or its parent) -> DR grade (--task dme: edema risk) datalist;
        official test split, validation carved from training."""
        from visionfm_core.data.datasets.classification import idrid_grading_to_datalist, report_datalist

        report_datalist(out, idrid_grading_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed, task=task))

    def aptos(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
              seed: int = 0) -> None:
        """APTOS-2019 ROOT/train.csv (id_code,diagnosis) + ROOT/train_images/ -> DR grade datalist (splits carved)."""
        from visionfm_core.data.datasets.classification import aptos_to_datalist, report_datalist

        report_datalist(out, aptos_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                               seed=seed))

    def messidor2(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0, csv_path: str | None = None, pairs_csv: str | None = None) -> None:
        """MESSIDOR-2 images under ROOT + ROOT/messidor_data.csv (Kaggle adjudicated grades) -> DR grade datalist;
        ungradable rows skipped; PAIRS_CSV (the ADCIS examination list as CSV) keeps both eyes in one split."""
        from visionfm_core.data.datasets.classification import messidor2_to_datalist, report_datalist

        report_datalist(out, messidor2_to_datalist(root, out=out, val_fraction=val_fraction,
                                                   test_fraction=test_fraction, seed=seed, csv_path=csv_path,
                                                   pairs_csv=pairs_csv))

    def octid(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
              seed: int = 0) -> None:
        """OCTID ROOT/{AMD,CSR,DR,MH,NORMAL}/ -> 5-class OCT datalist (splits carved)."""
        from visionfm_core.data.datasets.classification import octid_to_datalist, report_datalist

        report_datalist(out, octid_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                               seed=seed))

    def kermany(self, root: str, out: str = "datalist.json", val_fraction: float = 0.1, seed: int = 0) -> None:
        """Kermany OCT2017 ROOT/{train,test,val?}/{CNV,DME,DRUSEN,NORMAL}/ -> datalist; validation carved from
        train per patient when there is no val/."""
        from visionfm_core.data.datasets.classification import kermany_to_datalist, report_datalist

        report_datalist(out, kermany_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed))

    def refuge(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
               seed: int = 0, val_images: str | None = None, val_labels: str | None = None,
               test_images: str | None = None, test_labels: str | None = None) -> None:
        """REFUGE ROOT[/Training400]/{Glaucoma,Non-Glaucoma}/ (+ optional image folder and label CSV per official
        split) -> glaucoma datalist; splits not given are carved."""
        from visionfm_core.data.datasets.classification import refuge_to_datalist, report_datalist

        report_datalist(out, refuge_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                                seed=seed, val_images=val_images, val_labels=val_labels,
                                                test_images=test_images, test_labels=test_labels))

    def papila(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
               seed: int = 0, suspect: str = "exclude") -> None:
        """PAPILA ROOT/FundusImages/ + ROOT/ClinicalData/patient_data_{od,os}.csv -> glaucoma datalist, patients
        kept whole; --suspect class keeps glaucoma suspects as a third class."""
        from visionfm_core.data.datasets.classification import papila_to_datalist, report_datalist

        report_datalist(out, papila_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                                seed=seed, suspect=suspect))

    def jsiec(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.2,
              seed: int = 0) -> None:
        """JSIEC ROOT/<n>.<m>.<class name>/ (39 classes) -> datalist (splits carved)."""
        from visionfm_core.data.datasets.classification import jsiec_to_datalist, report_datalist

        report_datalist(out, jsiec_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                               seed=seed))

    def csv(self, csv_file: str, image_dir: str | None = None, out: str = "datalist.json", kind: str = "auto",
            class_names: list[str] | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
            seed: int = 0) -> None:
        """A CSV image,label | image,<target (unit)>,... | image,dr_grade,glaucoma,... (optional patient_id,
        split) -> classification, regression or multi-task datalist; images relative to IMAGE_DIR (default: the
        CSV's folder)."""
        from visionfm_core.data.datasets.classification import csv_to_datalist, report_datalist

        report_datalist(out, csv_to_datalist(csv_file, image_dir=image_dir, out=out, kind=kind,
                                             class_names=class_names, val_fraction=val_fraction,
                                             test_fraction=test_fraction, seed=seed))

    def drive(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0) -> None:
        """DRIVE ROOT/{training,test}/{images,1st_manual,mask}/ -> vessel datalist (validation carved from training)."""
        from visionfm_core.data.datasets.converters import drive_to_datalist

        _report(out, drive_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed))

    def stare(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
              seed: int = 0) -> None:
        """STARE ROOT/{stare-images,labels-ah}/ -> vessel datalist of the annotated photos (splits carved)."""
        from visionfm_core.data.datasets.converters import stare_to_datalist

        _report(out, stare_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                       seed=seed))

    def chase(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
              seed: int = 0) -> None:
        """CHASE_DB1 ROOT/Image_NN[LR].jpg + _1stHO.png -> vessel datalist (splits carved per child)."""
        from visionfm_core.data.datasets.converters import chase_to_datalist

        _report(out, chase_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                       seed=seed))

    def hrf(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, test_fraction: float = 0.3,
            seed: int = 0) -> None:
        """HRF ROOT/{images,manual1,mask}/ -> vessel datalist (splits carved)."""
        from visionfm_core.data.datasets.converters import hrf_to_datalist

        _report(out, hrf_to_datalist(root, out=out, val_fraction=val_fraction, test_fraction=test_fraction,
                                     seed=seed))

    def idrid_landmarks(self, root: str, out: str = "datalist.json", val_fraction: float = 0.2, seed: int = 0) -> None:
        """IDRiD 'C. Localization' (ROOT is it or its parent) -> optic disc + fovea landmark datalist."""
        from visionfm_core.data.datasets.converters import idrid_landmarks_to_datalist

        _report(out, idrid_landmarks_to_datalist(root, out=out, val_fraction=val_fraction, seed=seed))

    def landmark_csv(self, csv: str, image_dir: str | None = None, out: str = "datalist.json",
                     names: list[str] | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                     seed: int = 0) -> None:
        """A CSV image,<name>_x,<name>_y,... (optional split column) -> landmark datalist; images relative to
        IMAGE_DIR (default: the CSV's folder)."""
        from visionfm_core.data.datasets.converters import landmark_csv_to_datalist

        if isinstance(names, str):  # fire passes --names od as a string and --names od,fovea as a tuple
            names = names.split(",")
        _report(out, landmark_csv_to_datalist(csv, image_dir=image_dir, out=out, names=names,
                                              val_fraction=val_fraction, test_fraction=test_fraction, seed=seed))

    # OCT cube datasets with annotation masks (visionfm_core/data/datasets/oct_volumes.py): OUT is a folder that
    # receives the NIfTI cubes, the label maps and datalist.json (the bundle's --dataset_dir)

    def duke_dme(self, root: str, out: str, grader: int = 1, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 seed: int = 0, spacing: str | tuple | None = None) -> None:
        """Duke DME (Chiu et al. 2015) ROOT/Subject_NN.mat, read through eyepy -> OUT/images/*.nii.gz,
        OUT/labels/*_layers.nii.gz (the 9 classes of oct_layer_segmentation; 255 where not annotated) and
        OUT/datalist.json, split by subject. --grader 2: the second grader's boundaries and fluid. --spacing
        AXIAL,LATERAL,BETWEEN (mm) replaces eyepy's dataset means."""
        from visionfm_core.data.datasets.oct_volumes import duke_dme_to_datalist

        _report(os.path.join(out, "datalist.json"),
                duke_dme_to_datalist(root, out, grader=grader, val_fraction=val_fraction,
                                     test_fraction=test_fraction, seed=seed, spacing=_floats(spacing)))

    def retouch(self, root: str, out: str, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                spacing: str | tuple | None = None) -> None:
        """RETOUCH ROOT/RETOUCH-TrainingSet-<vendor>/<case>/{oct,reference}.mhd, read through eyepy ->
        OUT/images/*.nii.gz, OUT/labels/*_fluid.nii.gz (0 no fluid, 1 IRF, 2 SRF, 3 PED) and OUT/datalist.json with
        the vendor of each case, split per vendor. --spacing AXIAL,LATERAL,BETWEEN (mm) replaces the .mhd's."""
        from visionfm_core.data.datasets.oct_volumes import retouch_to_datalist

        _report(os.path.join(out, "datalist.json"),
                retouch_to_datalist(root, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                    spacing=_floats(spacing)))


def _floats(value) -> list[float] | None:
    """fire passes --spacing 1,2,3 as a tuple and --spacing "1,2,3" as a string."""
    if value is None:
        return None
    return [float(v) for v in (value.split(",") if isinstance(value, str) else value)]


def _report(out: str, datalist: dict) -> None:
    counts = {k: len(datalist[k]) for k in ("training", "validation", "test")}
    names = f", landmarks {datalist['landmark_names']}" if "landmark_names" in datalist else (
        f", classes {datalist['class_names']}" if "class_names" in datalist else "")
    print(f"wrote {out}: {counts}{names}")


class Commands:
    """VisionFM ophthalmic foundation models for MONAI."""

    def __init__(self):
        self.prepare_data = PrepareData()

    def modalities(self) -> None:
        """List the 8 modalities with their normalisation."""
        from visionfm_core.modalities import MODALITIES

        for m in MODALITIES.values():
            print(f"{m.name:<11} {m.description:<40} mean={m.mean} std={m.std}")

    def import_weights(self, src: str, modality: str, out: str | None = None, checkpoint_key: str = "teacher",
                       arch: str | None = None, patch_size: int | None = None, bundle: str | None = None,
                       dataset: str | None = None, encoder_file: str | None = None, avgpool_patchtokens: int = 0,
                       n_last_blocks: int | None = None, class_names: str | list | None = None,
                       overwrite: bool = False, bundles_dir: str | None = None, encoder: str = "visionfm") -> None:
        """--out FILE: check SRC (an original VisionFM, iBOT/DINO or fine-tuned checkpoint; with --encoder NAME another
        family's release: retfound_mae, retfound_dinov2, dinov2_vitb14, ...) against the encoder and write the bare
        backbone with a header (encoder, modality, source, sha256, licence) for the bundles to use (--encoder NAME
        there too). --arch / --patch_size default to the family's published size.

        --bundle BUNDLE: write the original's task model SRC (a fine-tuned classification checkpoint with
        visionfm_state_dict + classifier_state_dict, or a linear probe's state_dict with --encoder_file
        VFM_<Modality>_weights.pth) into BUNDLE/models/ (model.pt, class_names.json, network.json), with the
        original's head and preprocessing, so the bundle's evaluation, inference, export and MONAI Label run it
        unchanged. --dataset aptos2019|idrid|messidor2|papila|glaucoma_fundus|jsiec|retina|octid names its outputs
        in the original's class order (default: the bundle's classes, or --class_names a,b,c);
        --avgpool_patchtokens 0|1|2 is the pooling the head was trained with (fine-tuned models: 0).
        The other decoders of the original's evaluation scripts (a state_dict with --encoder_file) go into the bundle of
        their family: UNETR / linear segmentation heads (fundus_vessel_segmentation), landmarks
        (*_landmark_detection), regression (fundus_biomarker_regression; --class_names names its outputs), the
        13-output multi-task head (fundus_multidisease_classification), forecasting (fundus_glaucoma_forecasting,
        with the --avgpool_patchtokens it was trained with)."""
        if bundle is not None:
            from visionfm_core.encoders.weights import WeightsError
            from visionfm_core.tools.import_task import TaskImportError, import_task_checkpoint

            overrides = {k: v for k, v in (("arch", arch), ("patch_size", patch_size)) if v is not None}
            try:
                imported = import_task_checkpoint(src, bundle, modality, dataset=dataset, encoder_file=encoder_file,
                                                  checkpoint_key=checkpoint_key,
                                                  avgpool_patchtokens=avgpool_patchtokens,
                                                  n_last_blocks=n_last_blocks, class_names=class_names,
                                                  overwrite=overwrite, bundles_dir=bundles_dir, overrides=overrides)
            except (TaskImportError, WeightsError, FileNotFoundError, ValueError) as e:
                sys.exit(f"visionfm import-weights: {e}")
            print(imported)
            return
        if out is None:
            sys.exit("visionfm import-weights: give --out FILE (encoder weights) or --bundle BUNDLE (a task model)")
        from visionfm_core.encoders.families import get_encoder_family
        from visionfm_core.encoders.vit import build_encoder
        from visionfm_core.encoders.weights import (
            ORIGINAL_LICENCE,
            load_encoder_weights,
            read_checkpoint,
            save_encoder_weights,
            sha256sum,
        )
        from visionfm_core.modalities import get_modality

        modality = get_modality(modality).name
        family = get_encoder_family(encoder)
        arch, patch_size = arch or family.arch, int(patch_size or family.patch_size)
        raw = read_checkpoint(src)
        net = build_encoder(arch, patch_size, encoder=family.name)
        report = load_encoder_weights(net, raw, checkpoint_key)
        licence = ORIGINAL_LICENCE if _is_original_release(raw, src) else (
            None if family.name == "visionfm" else f"{family.licence}, from the {family.title} release")
        save_encoder_weights(net, out, modality=modality, encoder=family.name, arch=arch, patch_size=patch_size,
                             source=os.path.basename(src), sha256=sha256sum(src), checkpoint_key=report.entry,
                             licence=licence)
        print(report)
        print(f"wrote {out} ({family.name} {modality}, {arch}/{patch_size}{', licence: ' + licence if licence else ''})")

    def convert_oct(self, input: str, out: str, format: str = "auto", rows: int = 1024, cols: int = 512,
                    interlaced: bool = False, spacing: str | tuple | None = None) -> None:
        """Vendor OCT file INPUT (Heidelberg .e2e/.vol or XML export: the .xml or its folder, Topcon .fda/.fds, Zeiss
        .img, Bioptigen .OCT) -> NIfTI OUT
        (rows = axial, columns = lateral, slices = B-scans; spacing in mm) + a JSON sidecar; a file holding
        several volumes gives OUT_1.nii.gz, OUT_2.nii.gz, ... Zeiss .img: --rows/--cols give the B-scan size.
        --spacing AXIAL,LATERAL,BETWEEN (mm) replaces the file's spacing; Zeiss .img and Bioptigen .OCT files carry
        none, so for them it is required."""
        from visionfm_core.data.io.oct_convert import OCTConversionError, convert_oct

        if isinstance(spacing, str):
            spacing = [float(v) for v in spacing.split(",")]
        try:
            written = convert_oct(input, out, fmt=format, rows=rows, cols=cols, interlaced=interlaced,
                                  spacing=spacing)
        except OCTConversionError as e:
            sys.exit(f"visionfm convert-oct: {e}")
        for path in written:
            print(f"wrote {path}")

    def demo(self, out: str = "demo_output", epochs: int | None = None, arch: str | None = None,
             per_class: int | None = None, bundle: str = "fundus_dr_classification", bundles_dir: str | None = None,
             pretrain_epochs: int | None = None, image_size: int | None = None, lesion_scale: float | None = None,
             baseline: bool = True, report: bool = True) -> None:
        """Pretrain a small encoder with iBOT on built-in graded fundus phantoms (labels unused), fine-tune the fundus
        DR bundle from it and, for comparison, train a linear head on an untrained frozen encoder; evaluate both on
        the test split, grade the real fundus photo from scikit-image and write OUT/report/index.html (every task
        bundle on a built-in sample). BUNDLE: a folder or a name under --bundles_dir (default ./bundles or
        $VISIONFM_BUNDLES). Unset options: visionfm_core.tools.demo.DEMO_DEFAULTS (ViT-Ti, 64 px)."""
        from visionfm_core.tools.demo import run_demo

        run_demo(out=out, epochs=epochs, arch=arch, per_class=per_class, bundle=bundle, bundles_dir=bundles_dir,
                 pretrain_epochs=pretrain_epochs, image_size=image_size, lesion_scale=lesion_scale,
                 baseline=baseline, report=report)

    def export(self, bundle: str, format: str = "onnx", quantize: str | None = None, ckpt: str | None = None,
               out: str | None = None, dataset_dir: str | None = None, datalist: str | None = None,
               bundles_dir: str | None = None, **overrides) -> None:
        """Export BUNDLE's full network (a folder, or a name under --bundles_dir, default ./bundles) with its trained weights
        (models/model.pt; pretraining bundles: models/encoder.pt) to --format onnx | torchscript | torch-export,
        next to the weights (models/model.onnx, .ts, .pt2), checked against PyTorch on a sample. --quantize int8
        (ONNX) also writes models/model_int8.onnx and compares it with fp32 on the test split of --datalist
        (--dataset_dir) when given. Other --KEY VALUE pairs override config ids the weights were trained with
        (e.g. --arch vit_small --image_size 256). Run the ONNX file through the bundle with
        --config_file "['configs/inference.json','configs/inference_onnx.json']"."""
        from visionfm_core.tools.export import ExportError, export_bundle

        try:
            export_bundle(bundle, format=format, quantize=quantize, ckpt=ckpt, out=out, dataset_dir=dataset_dir,
                          datalist=datalist, bundles_dir=bundles_dir, **overrides)
        except ExportError as e:
            sys.exit(f"visionfm export: {e}")

    def benchmark(self, data_root: str, encoders, protocol: str = "finetune", seeds="0",
                  out: str = "benchmark_output", datasets=None, dry_run: bool = False, epochs: int | None = None,
                  arch: str = "vit_base", patch_size: int = 16, image_size: int = 224, batch_size: int = 16,
                  bootstrap: int = 1000, knn_k: int = 20, checkpoint_key: str = "teacher",
                  allow_modality_mismatch: bool = False, device: str | None = None, num_workers: int = 2,
                  seconds_per_image=None, bundles_dir: str | None = None) -> None:
        """Run the published protocol on the public datasets under DATA_ROOT (any of IDRiD, MESSIDOR-2, APTOS-2019,
        PAPILA, Glaucoma Fundus, JSIEC, Retina, OCTID, as DATA_ROOT/<dataset>/{train,val,test}/<class>/) for each
        encoder of --encoders (a.pt,b.pt or name=file pairs; name=fundus.pt+oct.pt: one file per modality;
        name=random: an untrained encoder) and each of --seeds (0,1,2). --protocol finetune (the original's recipe
        and per-dataset epochs), linear (frozen encoder + head, 100 epochs) or knn. Writes OUT/results.{csv,json,md}
        and OUT/comparisons.csv: test AUROC, AUPR, accuracy, kappa and F1 with 95 % bootstrap intervals, paired
        tests between encoders, published values beside them. Resumable: run the same command again. --dry_run
        checks every dataset and prints the plan and its estimated cost. --epochs replaces the recipe's epochs
        (tests, timings); --seconds_per_image TRAIN,SCORED replaces the measured speed of the estimate."""
        import logging

        from visionfm_core.tools.benchmark import BenchmarkDataError, BenchmarkError, Settings, run_benchmark

        def as_list(value) -> list[str]:  # fire: "0,1" -> (0, 1); "0" -> 0; "aptos2019" -> str
            if value is None:
                return []
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]

        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for noisy in ("ignite", "monai", "py.warnings"):  # the bundle's per-iteration lines; progress stays on
            logging.getLogger(noisy).setLevel(logging.WARNING)
        logging.getLogger("monai.bundle").setLevel(logging.ERROR)  # "logging file is False": the benchmark's choice
        try:
            settings = Settings(protocol=protocol, arch=arch, patch_size=patch_size, image_size=image_size,
                                batch_size=batch_size, epochs=epochs, checkpoint_key=checkpoint_key,
                                allow_modality_mismatch=allow_modality_mismatch, knn_k=knn_k, bootstrap=bootstrap,
                                device=device, num_workers=num_workers)
            rates = [float(v) for v in as_list(seconds_per_image)] or None
            if rates is not None and len(rates) != 2:
                raise BenchmarkError("--seconds_per_image takes two numbers: TRAIN,SCORED (seconds per image)")
            report = run_benchmark(data_root, as_list(encoders), out=out, seeds=[int(s) for s in as_list(seeds)],
                                   datasets=as_list(datasets) or None, settings=settings, dry_run=dry_run,
                                   bundles_dir=bundles_dir, seconds_per_image=rates)
        except (BenchmarkError, BenchmarkDataError) as e:
            sys.exit(f"visionfm benchmark: {e}")
        for name, path in report["tables"].items():
            print(f"wrote {path}")

    def synth_report(self, real_dir: str, synth_dir: str, modality: str, encoder: str | None = None,
                     out: str = "synth_report", arch: str | None = None, patch_size: int | None = None,
                     image_size: int = 224, k: int = 3, ssim_threshold: float | None = None,
                     cosine_threshold: float | None = None, top: int = 16, batch_size: int = 32,
                     device: str | None = None, allow_size_mismatch: bool = False,
                     allow_modality_mismatch: bool = False, equal_n: bool = True, bootstrap: int = 200) -> None:
        """Quality and privacy of the synthetic images under SYNTH_DIR against the real (training) images under
        REAL_DIR, in the feature space of a VisionFM encoder (--encoder encoder.pt; none: a random one, and the
        report says so): Fréchet distance, k-NN precision/recall (on equal numbers of images, a seeded subset of the
        larger folder, unless --equal_n False; with --bootstrap rounds of 95 % intervals, 0: none; N beside every
        figure), and for every synthetic image its nearest training image (features and pixel SSIM), near-copies
        flagged. Writes OUT/report.json and OUT/index.html."""
        from visionfm_core.encoders.weights import WeightsError
        from visionfm_core.synth.quality import SSIM_THRESHOLD, SynthError, synth_report

        try:
            report = synth_report(real_dir, synth_dir, modality, encoder=encoder, out=out, arch=arch,
                                  patch_size=patch_size, image_size=image_size, k=k,
                                  ssim_threshold=SSIM_THRESHOLD if ssim_threshold is None else ssim_threshold,
                                  cosine_threshold=cosine_threshold, top=top, batch_size=batch_size, device=device,
                                  allow_size_mismatch=allow_size_mismatch,
                                  allow_modality_mismatch=allow_modality_mismatch, equal_n=equal_n,
                                  bootstrap=bootstrap)
        except (SynthError, WeightsError, FileExistsError) as e:
            sys.exit(f"visionfm synth-report: {e}")
        c, enc = report["counts"], report["encoder"]
        print(f"encoder: {enc['arch']}/{enc['patch_size']}, " + (f"{enc['path']} (sha256 {enc['sha256']})"
                                                                 if enc["weights"] == "file" else "random init"))
        n, ci = report["n_compared"], report["ci95"] or {}

        def figure(name: str, fmt: str) -> str:
            interval = f" [95 % CI {ci[name][0]:{fmt}}, {ci[name][1]:{fmt}}]" if name in ci else ""
            return f"{report[name]:{fmt}}{interval}"

        print(f"{c['real']} real, {c['synthetic']} synthetic images ({c['real_skipped'] + c['synthetic_skipped']} "
              f"unreadable skipped); on N = {n['real']} real vs {n['synthetic']} synthetic: Fréchet distance "
              f"{figure('frechet_distance', '.4g')}, precision {figure('precision', '.3f')}, recall "
              f"{figure('recall', '.3f')} (k={report['k']})")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        print(f"{report['flagged_count']} near-copies flagged; wrote {os.path.join(out, 'index.html')}")

    def turing_page(self, real_dir: str, synth_dir: str, out: str = "turing_test", n: int = 50, seed: int = 0,
                    modality: str | None = None, size: int = 384) -> None:
        """A blinded visual Turing test: N real and N synthetic images in a seeded random order under neutral names,
        with an answer form saved by the browser as a JSON file. Share OUT/page only; OUT/key.json is the key."""
        from visionfm_core.synth.quality import SynthError
        from visionfm_core.synth.turing import turing_page

        try:
            key = turing_page(real_dir, synth_dir, out=out, n=n, seed=seed, modality=modality, size=size)
        except (SynthError, FileExistsError) as e:
            sys.exit(f"visionfm turing-page: {e}")
        print(f"wrote {os.path.join(out, 'page', 'index.html')} ({key['n_per_kind']} real + {key['n_per_kind']} "
              f"synthetic images) and the key {os.path.join(out, 'key.json')}: give readers the page folder only")

    def turing_score(self, key: str, *answers: str, out: str | None = None, margin: float = 0.1) -> None:
        """Score readers' answer files (ANSWERS..., saved from the Turing test page) against KEY: accuracy with a
        Clopper-Pearson 95 % interval, the equivalence test (TOST) against 50 % +/- --margin (default 0.1; say the
        margin with any "cannot tell apart" verdict), sensitivity / specificity for "synthetic"; --out writes the
        numbers as JSON."""
        import json

        from visionfm_core.engine.io import atomic_write_text
        from visionfm_core.synth.quality import SynthError
        from visionfm_core.synth.turing import format_score, score_turing

        if not answers:
            sys.exit("visionfm turing-score: give the key and at least one answers file")
        try:
            result = score_turing(list(answers), key, margin=margin)
        except SynthError as e:
            sys.exit(f"visionfm turing-score: {e}")
        print(format_score(result))
        if out:
            atomic_write_text(out, json.dumps(result, indent=1) + "\n")
            print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    from visionfm_core.encoders.weights import WeightsError

    try:
        fire.Fire(Commands, command=argv if argv is not None else sys.argv[1:], name="visionfm")
    except WeightsError as e:  # a model file that cannot be used: one line naming it and the reason
        sys.exit(f"visionfm: {e}")


if __name__ == "__main__":
    main()
