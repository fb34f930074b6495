"""Behaviour users rely on in the fundus DR bundle beyond the generic model-zoo checks."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from PIL import Image

from bundle_harness import REPO, TINY
from tests_common import chain_text
from visionfm_core import build_encoder, save_encoder_weights
from visionfm_core.data import real_fundus_photo, write_demo_dataset

BUNDLE = REPO / "bundles" / "fundus_dr_classification"
CONFIGS = BUNDLE / "configs"
LOG = str(CONFIGS / "logging.conf")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below: data, datalist and models/model.pt."""
    root = tmp_path_factory.mktemp("dr")
    datalist = write_demo_dataset(root / "data", per_class=2, size=48)
    run(config_file=str(CONFIGS / "train.json"), logging_file=LOG, dataset_dir=str(root / "data"), datalist=datalist,
        ckpt_dir=str(root / "models"), output_dir=str(root / "runs"), **TINY, **{"train::trainer::max_epochs": 1})
    return root, datalist


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def infer(folder, model, out, **extra):
    run(config_file=str(CONFIGS / "inference.json"), logging_file=LOG, dataset_dir=str(folder), ckpt_path=str(model),
        output_dir=str(out), **TINY, **extra)


def test_inference_on_the_real_fundus_photo(trained, tmp_path):
    root, _ = trained
    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(photo).save(tmp_path / "images" / "retina.jpg")
    Image.fromarray(photo[..., 1]).save(tmp_path / "images" / "retina_green_only.png")  # 1 channel -> replicated
    write_rgb_dicom(photo[::4, ::4], tmp_path / "images" / "retina_photo.dcm")  # ophthalmic photography DICOM
    infer(tmp_path / "images", root / "models" / "model.pt", tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [os.path.basename(r["image"]) for r in rows] == ["retina.jpg", "retina_green_only.png", "retina_photo.dcm"]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")]
        assert abs(sum(probs) - 1) < 1e-4 and int(r["pred"]) == int(np.argmax(probs))
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert records[0]["pred_name"] == rows[0]["pred_name"]


def write_rgb_dicom(rgb, path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OP"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_inference_from_a_datalist(trained, tmp_path):
    root, datalist = trained
    infer(datalist, root / "models" / "model.pt", tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == len(json.loads(open(datalist).read())["test"])


def test_evaluate_writes_metrics_on_the_test_split(trained, tmp_path):
    root, datalist = trained
    run(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], logging_file=LOG,
        dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"), eval_dir=str(tmp_path),
        **TINY)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "auroc", "aupr", "kappa", "f1"}
    assert metrics["num_images"] == len(json.loads(open(datalist).read())["test"])
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["auroc"] <= 1


def test_corrupt_image_is_reported_and_the_others_predicted(trained, tmp_path):
    root, _ = trained
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "images" / "a_good.png")
    data = (root / "data" / "test" / "0").glob("*.png").__next__().read_bytes()
    (tmp_path / "images" / "b_truncated.png").write_bytes(data[: len(data) // 2])
    infer(tmp_path / "images", root / "models" / "model.pt", tmp_path / "out")
    predicted = [r["image"] for r in read_csv(tmp_path / "out" / "predictions.csv")]
    unreadable = read_csv(tmp_path / "out" / "unreadable.csv")
    assert [p.rsplit("/", 1)[-1] for p in predicted] == ["a_good.png"]
    assert [r["file"].rsplit("/", 1)[-1] for r in unreadable] == ["b_truncated.png"] and unreadable[0]["reason"]
    # asked to stop on the first bad file: the error names it and nothing is written
    with pytest.raises(Exception) as info:
        infer(tmp_path / "images", root / "models" / "model.pt", tmp_path / "strict", skip_unreadable=False)
    assert "b_truncated.png" in chain_text(info.value)
    assert not (tmp_path / "strict" / "predictions.csv").exists()


def test_bad_labels_empty_lists_unknown_modality_missing_model(trained, tmp_path):
    root, datalist = trained
    content = json.loads(open(datalist).read())
    base = dict(logging_file=LOG, dataset_dir=str(root / "data"), ckpt_dir=str(tmp_path / "models"),
                output_dir=str(tmp_path / "runs"), **TINY, **{"train::trainer::max_epochs": 1})
    data_dir = root / "data"  # datalists resolve relative image paths against their own folder
    bad = dict(content, training=[dict(content["training"][0], label=7)])
    (data_dir / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / "train.json"), datalist=str(data_dir / "bad.json"), **base)
    assert "bad.json" in chain_text(info.value) and "7" in chain_text(info.value)
    empty = dict(content, training=[])
    (data_dir / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / "train.json"), datalist=str(data_dir / "empty.json"), **base)
    assert "empty.json" in chain_text(info.value)
    assert not (tmp_path / "models").exists()
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / "train.json"), datalist=datalist, modality="xray", **base)
    assert "Unknown modality 'xray'" in chain_text(info.value)
    with pytest.raises(Exception) as info:
        infer(root / "data" / "test", tmp_path / "nothing" / "model.pt", tmp_path / "out")
    assert "train the bundle first" in chain_text(info.value)


def network_and_optimizer(**overrides):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, "device": "$torch.device('cpu')", **overrides})
    return parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")


def test_frozen_and_finetuning_modes(tmp_path):
    net, opt = network_and_optimizer()
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in trainable for p in net.encoder.parameters())  # linear probe: head only
    assert {g["lr"] for g in opt.param_groups} == {0.001 * 4 / 256}
    net, opt = network_and_optimizer(freeze_encoder=False)
    head_lr = 0.001 * 4 / 256
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(net.head.layers[1].weight)] == pytest.approx(head_lr)
    assert lrs[id(net.encoder.blocks[0].attn.qkv.weight)] == pytest.approx(0.1 * head_lr)
    net, opt = network_and_optimizer(freeze_encoder=False, layer_decay=0.5)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(net.encoder.blocks[11].mlp.fc1.weight)] == pytest.approx(0.1 * head_lr * 0.5)
    assert lrs[id(net.encoder.blocks[10].mlp.fc1.weight)] == pytest.approx(0.1 * head_lr * 0.25)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(net.encoder.pos_embed)] == 0 and decay[id(net.encoder.blocks[0].norm1.weight)] == 0


def test_pretrained_encoder_is_loaded_and_other_architectures_refused(tmp_path):
    torch.manual_seed(3)
    enc = build_encoder("vit_tiny", img_size=32)
    save_encoder_weights(enc, tmp_path / "fundus_encoder.pt", modality="Fundus")
    net, _ = network_and_optimizer(pretrained_encoder=str(tmp_path / "fundus_encoder.pt"))
    assert torch.equal(net.encoder.blocks[5].attn.qkv.weight, enc.blocks[5].attn.qkv.weight)
    save_encoder_weights(build_encoder("vit_small", img_size=32), tmp_path / "small.pt")
    with pytest.raises(Exception) as info:
        network_and_optimizer(pretrained_encoder=str(tmp_path / "small.pt"))
    assert "small.pt" in chain_text(info.value) and "does not fit this encoder" in chain_text(info.value)


@pytest.mark.slow
def test_multi_process_training_with_torchrun_on_cpu(tmp_path):
    """2 processes, gloo: DDP over the whole network, distributed sampler, one model.pt written by rank 0."""
    datalist = write_demo_dataset(tmp_path / "data", per_class=2, size=48)
    overrides = [f"--{k} {v}" for k, v in TINY.items()] + [
        f"--dataset_dir {tmp_path / 'data'}", f"--datalist {datalist}", f"--ckpt_dir {tmp_path / 'models'}",
        f"--output_dir {tmp_path / 'runs'}", "--train::trainer::max_epochs 1", "--freeze_encoder False",
        f"--logging_file {LOG}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file",
           f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"]
    for o in overrides:
        cmd += o.split(" ", 1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.blocks.") for k in state) and not any(k.startswith("module.") for k in state)
