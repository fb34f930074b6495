"""`visionfm export` and ONNX Runtime inference through a bundle (configs/inference_onnx.json), on tiny trained
bundles: the ONNX run writes what the PyTorch run writes; TorchScript and torch.export files load back and agree;
missing or unfitting weights are clear errors and leave nothing behind."""

import csv
import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, run

from bundle_harness import REPO, TINY, config, make_data
from visionfm_core.tools.cli import main
from visionfm_core.tools.export import ExportError, OnnxRuntimeNetwork, export_bundle
from tests_common import assert_close_to_scale

BUNDLES = REPO / "bundles"
CLASSIFICATION = BUNDLES / "fundus_dr_classification"
SEGMENTATION = BUNDLES / "fundus_vessel_segmentation"
VOLUME = BUNDLES / "mri_orbit_segmentation"
PRETRAINING = BUNDLES / "fundus_ibot_pretraining"


def _train(bundle, root):
    """1 tiny epoch; returns (the data spec, models/model.pt, the overrides the network was built with)."""
    spec = make_data(bundle, root)
    run(config_file=config(bundle, "train"), logging_file=str(bundle / "configs" / "logging.conf"), **TINY,
        **spec["train"], ckpt_dir=str(root / "models"), output_dir=str(root / "runs"),
        **{"train::trainer::max_epochs": 1})
    net_overrides = {**TINY, **spec.get("infer", {})}
    return spec, root / "models" / "model.pt", net_overrides


def _infer(bundle, spec, model, out, overrides, onnx_path=None):
    """inference.json in fp32 PyTorch, or with the ONNX overlay reading `onnx_path`."""
    configs = [config(bundle, "inference")] + ([config(bundle, "inference_onnx")] if onnx_path else [])
    extra = {"onnx_path": str(onnx_path)} if onnx_path else {"precision": "fp32"}
    run(config_file=configs, logging_file=str(bundle / "configs" / "logging.conf"), dataset_dir=spec["infer_dir"],
        ckpt_path=str(model), output_dir=str(out), **overrides, **extra)


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification")
    return (root, *_train(CLASSIFICATION, root))


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    return (root, *_train(SEGMENTATION, root))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_classification_onnx_through_the_bundle_matches_pytorch(classification, capsys):
    root, spec, model, overrides = classification
    report = export_bundle(CLASSIFICATION, "onnx", quantize="int8", ckpt=model, datalist=spec["train"]["datalist"],
                           dataset_dir=spec["train"]["dataset_dir"], **overrides)
    onnx_path = root / "models" / "model.onnx"
    assert report["files"] == [str(onnx_path), str(root / "models" / "model_int8.onnx")]
    assert report["batch"] == "dynamic" and report["max_abs_difference"][1] < 1e-4
    int8 = report["int8"]
    assert int8["compared_on"] == "test data" and int8["items"] == 10  # the test split: 2 phantoms x 5 grades
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["max_probability_difference"] < 0.5
    printed = capsys.readouterr().out
    assert "max abs difference to PyTorch" in printed and "top1_agreement" in printed
    assert not list((root / "models").glob(".*.tmp*")), "temporary files left behind"

    # the overlay is a complete inference workflow (MONAI's property check) and does not load model.pt
    workflow = ConfigWorkflow(config_file=[config(CLASSIFICATION, "inference"), config(CLASSIFICATION,
                              "inference_onnx")], workflow_type="infer", dataset_dir=spec["infer_dir"],
                              ckpt_path=str(model), onnx_path=str(onnx_path), output_dir=str(root / "wf"), **overrides)
    workflow.initialize()
    assert not workflow.check_properties()
    assert isinstance(workflow.parser.get_parsed_content("network"), OnnxRuntimeNetwork)

    _infer(CLASSIFICATION, spec, model, root / "torch", overrides)
    _infer(CLASSIFICATION, spec, model, root / "onnx", overrides, onnx_path=onnx_path)
    _infer(CLASSIFICATION, spec, model, root / "int8", overrides, onnx_path=root / "models" / "model_int8.onnx")
    torch_rows, onnx_rows = _rows(root / "torch" / "predictions.csv"), _rows(root / "onnx" / "predictions.csv")
    assert len(torch_rows) == len(onnx_rows) == 10
    for a, b in zip(torch_rows, onnx_rows):
        assert a["image"] == b["image"] and a["pred"] == b["pred"]
        probs = [k for k in a if k.startswith("prob_")]
        assert max(abs(float(a[k]) - float(b[k])) for k in probs) < 1e-4
    assert len(_rows(root / "int8" / "predictions.csv")) == 10


@pytest.mark.slow
def test_classification_torchscript_and_torch_export_load_back(classification):
    root, spec, model, overrides = classification
    net_input = torch.randn(3, 3, 32, 32)
    from visionfm_core.tools.export import build_bundle_network, load_bundle_weights

    reference = build_bundle_network(CLASSIFICATION, **overrides)
    load_bundle_weights(reference, model, CLASSIFICATION, **overrides)
    with torch.no_grad():
        expected = reference(net_input)
    ts = export_bundle(CLASSIFICATION, "torchscript", ckpt=model, **overrides)
    assert ts["files"] == [str(root / "models" / "model.ts")]
    scripted = torch.jit.load(ts["files"][0])
    pt2 = export_bundle(CLASSIFICATION, "torch-export", ckpt=model, **overrides)
    assert pt2["files"] == [str(root / "models" / "model.pt2")]
    exported = torch.export.load(pt2["files"][0]).module()
    with torch.no_grad():
        assert_close_to_scale(scripted(net_input), expected)
        if pt2["batch"] == "dynamic":
            assert_close_to_scale(exported(net_input), expected)
        else:  # specialised to the batch it was exported at
            assert_close_to_scale(exported(net_input[:2]), expected[:2])


@pytest.mark.slow
def test_segmentation_onnx_through_the_bundle_gives_the_same_masks(segmentation):
    root, spec, model, overrides = segmentation
    report = export_bundle(SEGMENTATION, "onnx", ckpt=model, **overrides)
    onnx_path = root / "models" / "model.onnx"
    assert report["files"] == [str(onnx_path)]
    _infer(SEGMENTATION, spec, model, root / "torch", overrides)
    _infer(SEGMENTATION, spec, model, root / "onnx", overrides, onnx_path=onnx_path)  # sliding windows included
    masks = sorted((root / "torch").rglob("*_mask.png"))
    assert masks, "the PyTorch run wrote no masks"
    from PIL import Image

    for mask in masks:
        other = root / "onnx" / mask.relative_to(root / "torch")
        a, b = np.asarray(Image.open(mask)), np.asarray(Image.open(other))
        assert a.shape == b.shape and (a != b).mean() < 1e-3, mask.name  # equal but for a rare tie at 0.5


@pytest.mark.slow
def test_volume_segmentation_onnx_through_the_bundle(tmp_path):
    import nibabel as nib

    spec, model, overrides = _train(VOLUME, tmp_path)
    report = export_bundle(VOLUME, "onnx", ckpt=model, **overrides)
    assert report["max_abs_difference"][1] < 1e-3
    _infer(VOLUME, spec, model, tmp_path / "torch", overrides)
    _infer(VOLUME, spec, model, tmp_path / "onnx", overrides, onnx_path=tmp_path / "models" / "model.onnx")
    segs = sorted((tmp_path / "torch").rglob("*_seg.nii.gz"))
    assert segs
    for seg in segs:
        a = np.asarray(nib.load(seg).dataobj)
        b = np.asarray(nib.load(tmp_path / "onnx" / seg.relative_to(tmp_path / "torch")).dataobj)
        assert a.shape == b.shape and (a != b).mean() < 1e-3


def test_pretraining_bundle_exports_its_encoder_as_an_embedding_model(tmp_path):
    from visionfm_core import build_encoder
    from visionfm_core.data import write_phantom_folder
    from visionfm_core.encoders import save_encoder_weights

    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", 16, 32).eval()
    save_encoder_weights(encoder, tmp_path / "models" / "encoder.pt", modality="Fundus", arch="vit_tiny",
                         patch_size=16)
    overrides = {"arch": "vit_tiny", "image_size": 32}
    report = export_bundle(PRETRAINING, "onnx", quantize="int8", ckpt=tmp_path / "models" / "encoder.pt",
                           **overrides)
    assert report["files"][0] == str(tmp_path / "models" / "encoder.onnx")
    assert report["int8"]["kind"] == "embedding" and report["int8"]["min_cosine_similarity"] > 0.9
    folder = write_phantom_folder(tmp_path / "images", "Fundus", count=3, size=48)
    run(config_file=[config(PRETRAINING, "inference"), config(PRETRAINING, "inference_onnx")],
        logging_file=str(PRETRAINING / "configs" / "logging.conf"), dataset_dir=folder,
        ckpt_path=str(tmp_path / "models" / "encoder.pt"), onnx_path=report["files"][0],
        output_dir=str(tmp_path / "emb"), num_workers=0, **overrides)
    embeddings = sorted((tmp_path / "emb").glob("*.npy"))
    assert len(embeddings) == 3 and np.load(embeddings[0]).shape[-1] == 192


def test_export_without_weights_names_the_missing_file(tmp_path):
    with pytest.raises(ExportError, match=r"models/model\.pt not found: train the bundle first \(configs/train\.json"):
        export_bundle(CLASSIFICATION, "onnx", ckpt=tmp_path / "models" / "model.pt", **TINY)
    with pytest.raises(SystemExit, match="visionfm export: .*model.pt not found"):
        main(["export", str(CLASSIFICATION), "--format", "onnx", "--ckpt", str(tmp_path / "models" / "model.pt")])
    with pytest.raises(ExportError, match="encoder.pt not found: pretrain first"):
        export_bundle(PRETRAINING, "onnx", ckpt=tmp_path / "models" / "encoder.pt")
    assert not (tmp_path / "models").exists()


def test_export_refuses_a_checkpoint_with_other_keys(tmp_path):
    from visionfm_core.tools.export import build_bundle_network

    net = build_bundle_network(CLASSIFICATION, **TINY)
    state = net.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.layers.7.weight"]
    bad = tmp_path / "model.pt"
    torch.save(state, bad)
    with pytest.raises(ExportError, match=rf"{bad} does not fit the fundus_dr_classification network: 1 network "
                                          r"keys missing .*1 keys the network does not have \(e\.g\. extra\.weight\)"):
        export_bundle(CLASSIFICATION, "onnx", ckpt=bad, **TINY)
    torch.save({"weights": [1, 2]}, bad)
    with pytest.raises(ExportError, match="is not a state dict of tensors"):
        export_bundle(CLASSIFICATION, "onnx", ckpt=bad, **TINY)
    with pytest.raises(ExportError, match="--format must be one of"):
        export_bundle(CLASSIFICATION, "tensorrt", ckpt=bad, **TINY)
    with pytest.raises(ExportError, match="use it with --format onnx"):
        export_bundle(CLASSIFICATION, "torchscript", quantize="int8", ckpt=bad, **TINY)
    with pytest.raises(ExportError, match="fundus_ldm_generation is a generation bundle"):
        export_bundle(BUNDLES / "fundus_ldm_generation", "onnx", ckpt=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # nothing written


def test_onnx_network_without_a_file_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.onnx not found: export it first"):
        OnnxRuntimeNetwork(tmp_path / "models" / "model.onnx")


def test_every_bundle_has_an_onnx_overlay():
    from bundle_harness import kind_of

    for bundle in sorted(p.parent.parent for p in BUNDLES.glob("*/configs/metadata.json")):
        if kind_of(bundle) == "generation":  # sampling runs two networks in a loop: no ONNX inference path
            assert not (bundle / "configs" / "inference_onnx.json").exists()
            continue
        overlay = json.loads((bundle / "configs" / "inference_onnx.json").read_text())
        assert overlay["network"]["_target_"] == "visionfm_core.tools.export.OnnxRuntimeNetwork", bundle.name
        assert all("checkpointloader" not in step and "load_bundle_encoder" not in step
                   for step in overlay["initialize"]), bundle.name
