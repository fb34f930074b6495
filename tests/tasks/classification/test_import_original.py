"""`visionfm import-weights FILE --bundle`: the original release's classification models run in a bundle unchanged.

The reference below is an independent re-statement of the original's published architecture (its ViT and its
`ClsHead`, with the original's key names), NOT this project's classes: checkpoints are written in the original's
layouts from its random tensors, imported, and the bundle's network must give the same outputs.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from original_reference import RefViT, ddp
from visionfm_core.tools.cli import main

REPO = Path(__file__).resolve().parents[3]
TINY = {"arch": "vit_tiny"}  # at the bundle's 224 px: the position embeddings are the imported ones
FUNDUS_MEAN = (0.423737496137619, 0.2609460651874542, 0.128403902053833)
FUNDUS_STD = (0.29482534527778625, 0.20167365670204163, 0.13668020069599152)


# --- the reference: the original's published architecture in plain torch -----------------------------------------


class RefClsHead(nn.Module):
    """The original ClsHead: BatchNorm2d(C, eps 1e-6, momentum 0.99) on (B, C, 1, 1), then the classifier."""

    def __init__(self, in_dim, k, layers=3):
        super().__init__()
        widths = {3: [in_dim, in_dim // 2, in_dim // 4, k], 2: [in_dim, in_dim // 4, k], 1: [in_dim, k]}[layers]
        mods = []
        for i in range(len(widths) - 1):
            mods.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                mods += [nn.GELU(), nn.Dropout(0.1)]
        self.classifier = nn.Sequential(*mods)
        self.channel_bn = nn.BatchNorm2d(in_dim, eps=1e-6, momentum=0.99)

    def forward(self, x):
        return self.classifier(self.channel_bn(x[:, :, None, None]).flatten(1))


def ref_features(vit, x, mode, n):
    tokens = vit.get_intermediate_layers(x, n)
    cls = [t[:, 0] for t in tokens]
    mean = [tokens[-1][:, 1:].mean(1)]
    return torch.cat({0: cls, 1: mean, 2: cls + mean}[mode], -1)


def make_reference(k, mode, n, layers, seed=0):
    torch.manual_seed(seed)
    vit = RefViT().eval()
    head = RefClsHead(192 * {0: n, 1: 1, 2: n + 1}[mode], k, layers).eval()
    with torch.no_grad():  # random tensors everywhere, batch-norm statistics included (eps 1e-6 then matters)
        for p in head.parameters():
            p.normal_(0, 0.05)
        head.channel_bn.running_mean.normal_(0, 0.5)
        head.channel_bn.running_var.uniform_(1e-5, 2e-3)
        for m in vit.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.1), m.bias.normal_(0, 0.1)
    return vit, head


def bundle_copy(tmp_path, name="fundus_dr_classification"):
    dst = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, dst)
    return dst


def bundle_network(bundle):
    from monai.bundle import ConfigParser

    from visionfm_core.encoders.weights import load_model_weights

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**TINY, "bundle_root": str(bundle)})
    net = parser.get_parsed_content("network_def")
    load_model_weights(net, bundle / "models" / "model.pt")
    return net.eval(), parser


# fine-tuned (the released models), and linear probes in each pooling mode and ClsHead depth
KINDS = [("fine-tuned", 0, 4, 3), ("linear", 0, 4, 3), ("linear", 1, 1, 3), ("linear", 2, 4, 3), ("linear", 0, 1, 2)]


def write_original(tmp_path, kind, vit, head):
    if kind == "fine-tuned":
        src = tmp_path / "checkpoint_best_finetune.pth"
        torch.save({"epoch": 5, "classifier_state_dict": ddp(head.state_dict()), "visionfm_state_dict": vit.state_dict(),
                    "optimizer": {}, "scheduler": {}, "best_auc": 0.9}, src)
        return src, []
    src, enc = tmp_path / "checkpoint_teacher_linear.pth", tmp_path / "VFM_Fundus_weights.pth"
    torch.save({"epoch": 3, "state_dict": ddp(head.state_dict()), "optimizer": {}, "scheduler": {}, "best_f1": 0.5}, src)
    backbone = vit.state_dict()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.items()},
                "student": {f"module.backbone.{k}": v for k, v in backbone.items()}, "epoch": 400}, enc)
    return src, ["--encoder_file", str(enc)]


@pytest.mark.parametrize("kind,mode,n,layers", KINDS, ids=lambda v: str(v))
def test_imported_model_equals_the_original(tmp_path, capsys, kind, mode, n, layers):
    vit, head = make_reference(5, mode, n, layers)
    src, extra = write_original(tmp_path, kind, vit, head)
    bundle = bundle_copy(tmp_path)
    main(["import-weights", str(src), "--modality", "fundus", "--bundle", str(bundle), "--dataset", "idrid",
          "--arch", "vit_tiny", "--avgpool_patchtokens", str(mode), *extra])
    assert "wrote" in capsys.readouterr().out
    models = bundle / "models"
    assert json.loads((models / "class_names.json").read_text())["class_names"] == \
        ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"]
    assert json.loads((models / "network.json").read_text())["head_options"]["avgpool_patchtokens"] == mode
    net, _ = bundle_network(bundle)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ours, reference = net(x), head(ref_features(vit, x, mode, n))
    difference = (ours - reference).abs().max().item()
    print(f"IMPORT {kind} avgpool_patchtokens={mode} n_last_blocks={n} layers={layers}: max abs diff {difference:.3g}")
    assert difference <= 1e-4 and reference.abs().max() > 1e-2  # the outputs are not all near zero


def test_real_photo_through_the_bundle_with_the_original_preprocessing(tmp_path, capsys):
    """The bundle's own inference run (original preprocessing, fp32) on the real photo gives the probabilities of
    the reference fed the original's evaluation tensor: Pillow bicubic to 224 x 224, /255, the Fundus mean and std."""
    from monai.bundle import ConfigWorkflow

    from visionfm_core.data import real_fundus_photo

    vit, head = make_reference(5, 0, 4, 3, seed=1)
    src, _ = write_original(tmp_path, "fine-tuned", vit, head)
    bundle = bundle_copy(tmp_path)
    main(["import-weights", str(src), "--modality", "fundus", "--bundle", str(bundle), "--dataset", "aptos2019",
          "--arch", "vit_tiny"])
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = np.round(real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(photos / "retina.png")

    picture = Image.open(photos / "retina.png").convert("RGB").resize((224, 224), Image.BICUBIC)
    tensor = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255
    tensor = (tensor - torch.tensor(FUNDUS_MEAN)[:, None, None]) / torch.tensor(FUNDUS_STD)[:, None, None]
    with torch.no_grad():
        expected = head(ref_features(vit, tensor[None], 0, 4)).softmax(-1)[0]

    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), workflow_type="infer",
                        bundle_root=str(bundle), dataset_dir=str(photos), output_dir=str(tmp_path / "out"),
                        precision="fp32", num_workers=0, **TINY)
    wf.initialize()
    assert wf.parser.get_parsed_content("preprocessing_mode") == "original"
    wf.run()
    wf.finalize()
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        row = next(csv.DictReader(f))
    # the CSV's 6 decimals are well inside the 1e-4 asked for
    probabilities = torch.tensor([float(row[f"prob_{c}"]) for c in
                                  ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr")])
    difference = (probabilities - expected).abs().max().item()
    print(f"IMPORT real photo, original preprocessing: max abs probability diff {difference:.3g}")
    assert difference <= 1e-4
    # the default preprocessing (bilinear on the decoded photo) is another tensor: the option is what matters
    default = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), workflow_type="infer",
                             bundle_root=str(bundle), dataset_dir=str(photos), preprocessing_mode="default", **TINY)
    default.initialize()
    ours = default.parser.get_parsed_content("preprocessing")({"image": str(photos / "retina.png")})["image"]
    assert (ours.as_tensor() - tensor).abs().max() > 1e-3


def test_a_head_that_does_not_fit_is_refused_and_nothing_is_written(tmp_path):
    bundle = bundle_copy(tmp_path)
    vit, head = make_reference(3, 0, 4, 3)  # 3 outputs: PAPILA's, not IDRiD's 5
    src, _ = write_original(tmp_path, "fine-tuned", vit, head)
    base = ["import-weights", str(src), "--modality", "fundus", "--bundle", str(bundle), "--arch", "vit_tiny"]
    with pytest.raises(SystemExit, match=r"checkpoint_best_finetune.pth \[classifier_state_dict\]: classifier.6.weight "
                                         r"has shape \(3, 192\), 3 outputs, but IDRiD has 5 classes"):
        main([*base, "--dataset", "idrid"])
    with pytest.raises(SystemExit, match="fundus_dr_classification's default classes are 5"):
        main(base)
    with pytest.raises(SystemExit, match="channel_bn.weight has 768 channels, but --avgpool_patchtokens 1"):
        main([*base, "--dataset", "papila", "--avgpool_patchtokens", "1"])
    with pytest.raises(SystemExit, match="not --n_last_blocks 2"):
        main([*base, "--dataset", "papila", "--n_last_blocks", "2"])
    with pytest.raises(SystemExit, match="OCTID is a OCT dataset"):
        main([*base, "--dataset", "octid"])
    assert not (bundle / "models").exists()
    # a linear probe without its encoder; an encoder of another modality
    _, _ = write_original(tmp_path, "linear", vit, head)
    probe = tmp_path / "checkpoint_teacher_linear.pth"
    with pytest.raises(SystemExit, match="pass the encoder it was trained on"):
        main(["import-weights", str(probe), "--modality", "fundus", "--bundle", str(bundle), "--dataset", "papila",
              "--arch", "vit_tiny"])
    (tmp_path / "VFM_Fundus_weights.pth").rename(tmp_path / "VFM_OCT_weights.pth")
    with pytest.raises(SystemExit, match="holds an encoder for OCT images"):
        main(["import-weights", str(probe), "--modality", "fundus", "--bundle", str(bundle), "--dataset", "papila",
              "--arch", "vit_tiny", "--encoder_file", str(tmp_path / "VFM_OCT_weights.pth")])
    assert not (bundle / "models").exists()
    # a good import, then a second one without --overwrite
    main([*base, "--dataset", "papila"])
    with pytest.raises(SystemExit, match="model.pt exists: pass --overwrite"):
        main([*base, "--dataset", "papila"])


def test_training_the_bundle_forgets_the_imported_head(tmp_path):
    from ignite.engine import Engine

    from visionfm_core.engine.writers import ClassNamesSaver
    from visionfm_core.models import network_settings
    from visionfm_core.models.settings_file import write_network_settings

    write_network_settings(tmp_path, {"head": "original_classification", "head_options": {}})
    assert network_settings(tmp_path / "model.pt")["head"] == "original_classification"
    engine = Engine(lambda e, b: None)
    ClassNamesSaver(str(tmp_path), ["a", "b"]).attach(engine)
    engine.run([0], max_epochs=1)
    assert network_settings(tmp_path / "model.pt") == {}


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_original_head_scripts_and_exports(tmp_path, mode):
    """The bundle checks script and export the network: the original head must survive both, in every mode."""
    from tests_common import assert_scripts_and_exports
    from visionfm_core.models import VisionFMTaskModel

    torch.manual_seed(0)
    net = VisionFMTaskModel("original_classification", 4, arch="vit_tiny", img_size=32,
                            head_options={"avgpool_patchtokens": mode, "n_last_blocks": 2}).eval()
    assert_scripts_and_exports(net, torch.randn(2, 3, 32, 32), tmp_path)


def test_imported_bundle_exports(tmp_path):
    """`visionfm export` builds the bundle's network from its configs: the imported head and weights, unchanged."""
    from visionfm_core.tools.export import export_bundle

    vit, head = make_reference(3, 0, 4, 3)
    src, _ = write_original(tmp_path, "fine-tuned", vit, head)
    bundle = bundle_copy(tmp_path)
    main(["import-weights", str(src), "--modality", "fundus", "--bundle", str(bundle), "--dataset", "papila",
          "--arch", "vit_tiny"])
    report = export_bundle(bundle, format="onnx", log=lambda *a: None, **TINY)
    assert (bundle / "models" / "model.onnx").is_file()
    assert max(report["max_abs_difference"].values()) <= 1e-3
