"""`visionfm import-weights FILE --bundle`: the decoders the original's evaluation scripts train (UNETR and linear
segmentation, landmarks, biomarker regression, forecasting, the 13-output multi-task head) run in their bundles
unchanged.

Each checkpoint is written in the original's layout (`{epoch, state_dict: the decoder with DDP's module.*, ...}`,
the encoder in a pretraining file) from seeded random tensors, imported with the CLI into a copy of the bundle, and
the network the bundle builds from its inference.json must give what a reference written here from the original's
published architecture gives on the same input (functional torch on the same tensors, not this project's classes).
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from original_reference import ddp, random_ref_vit, save_pretraining_file
from visionfm_core.tools.cli import main

REPO = Path(__file__).resolve().parents[2]
DIM = 192  # vit_tiny: the bundles build it with --arch vit_tiny (12 blocks, as ViT-B)


# --- the original's decoders: tensor names and shapes, and their forward passes, from its published code -----------


def conv_block(shapes, name, cin, cout):
    """ConvBlock: Conv2d 3x3 (layers.0) + BatchNorm2d (layers.1) + ReLU."""
    shapes.update({f"{name}.layers.0.weight": (cout, cin, 3, 3), f"{name}.layers.0.bias": (cout,),
                   **{f"{name}.layers.1.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")}})


def deconv_block(shapes, name, cin, cout):
    """DeconvBlock: ConvTranspose2d 2x2 stride 2 (deconv)."""
    shapes.update({f"{name}.deconv.weight": (cin, cout, 2, 2), f"{name}.deconv.bias": (cout,)})


def unetr_shapes(k, d=DIM, b=32):
    s = {}
    deconv_block(s, "d1", d, 4 * b), deconv_block(s, "s1.0", d, 4 * b), conv_block(s, "s1.1", 4 * b, 4 * b)
    conv_block(s, "c1.0", 8 * b, 4 * b), conv_block(s, "c1.1", 4 * b, 4 * b)
    deconv_block(s, "d2", 4 * b, 2 * b), deconv_block(s, "s2.0", d, 2 * b), conv_block(s, "s2.1", 2 * b, 2 * b)
    deconv_block(s, "s2.2", 2 * b, 2 * b), conv_block(s, "s2.3", 2 * b, 2 * b)
    conv_block(s, "c2.0", 4 * b, 2 * b), conv_block(s, "c2.1", 2 * b, 2 * b)
    deconv_block(s, "d3", 2 * b, b), deconv_block(s, "s3.0", d, b)
    for i in (1, 3, 5):
        conv_block(s, f"s3.{i}", b, b)
    deconv_block(s, "s3.2", b, b), deconv_block(s, "s3.4", b, b)
    conv_block(s, "c3.0", 2 * b, b), conv_block(s, "c3.1", b, b)
    deconv_block(s, "d4", b, b // 2), conv_block(s, "s4.0", 3, b // 2), conv_block(s, "s4.1", b // 2, b // 2)
    conv_block(s, "c4.0", b, b // 2), conv_block(s, "c4.1", b // 2, b // 2)
    s.update({"cls.weight": (k, b // 2, 1, 1), "cls.bias": (k,)})
    return s


def ref_unetr(t, maps, image):
    def conv(name, x):
        x = F.conv2d(x, t[f"{name}.layers.0.weight"], t[f"{name}.layers.0.bias"], padding=1)
        bn = [t[f"{name}.layers.1.{p}"] for p in ("running_mean", "running_var", "weight", "bias")]
        return F.relu(F.batch_norm(x, *bn, training=False, eps=1e-5))

    def up(name, x):
        return F.conv_transpose2d(x, t[f"{name}.deconv.weight"], t[f"{name}.deconv.bias"], stride=2)

    def seq(name, ops, x):
        for i, op in enumerate(ops):
            x = op(f"{name}.{i}", x)
        return x

    z3, z6, z9, z12 = maps
    x = seq("c1", [conv, conv], torch.cat([up("d1", z12), seq("s1", [up, conv], z9)], 1))
    x = seq("c2", [conv, conv], torch.cat([up("d2", x), seq("s2", [up, conv, up, conv], z6)], 1))
    x = seq("c3", [conv, conv], torch.cat([up("d3", x), seq("s3", [up, conv] * 3, z3)], 1))
    x = seq("c4", [conv, conv], torch.cat([up("d4", x), seq("s4", [conv, conv], image)], 1))
    return F.conv2d(x, t["cls.weight"], t["cls.bias"])  # Dropout2d: identity in eval


def ref_linear_seg(t, maps, image):
    logits = F.conv2d(torch.cat(maps, 1), t["conv_seg.weight"], t["conv_seg.bias"])
    return torch.nn.Upsample(scale_factor=16, mode="bilinear")(logits)


def ref_bn_mlp(t, x, layers):
    """ClsHead / RegHead: BatchNorm2d(eps 1e-6) on (B, C, 1, 1), flatten, Linear/GELU/Dropout layers."""
    bn = [t[f"channel_bn.{p}"] for p in ("running_mean", "running_var", "weight", "bias")]
    x = F.batch_norm(x[:, :, None, None], *bn, training=False, eps=1e-6).flatten(1)
    for i in layers:
        x = F.linear(x, t[f"classifier.{i}.weight"], t[f"classifier.{i}.bias"])
        if i != layers[-1]:
            x = F.gelu(x)
    return x


def original_pe(dim, max_len=6500):
    """ForecastHead.pe, as the original fills it."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, 1, dim)
    pe[:, 0, 0::2] = torch.sin(position * div_term)
    pe[:, 0, 1::2] = torch.cos(position * div_term)
    return pe


def random_state(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("layers.1.weight", "channel_bn.weight")):
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 16
            state[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if name.endswith("running_var"):
            state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(100)
    return state


def dense_maps(vit, x):
    """Blocks 3, 5, 7, 11 of get_intermediate_layers(x, 12), patch tokens reshaped to (B, D, h, w)."""
    tokens = vit.get_intermediate_layers(x, 12)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    return [tokens[i][:, 1:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2) for i in (3, 5, 7, 11)]


def last_cls(vit, x, n=4):
    return torch.cat([t[:, 0] for t in vit.get_intermediate_layers(x, n)], -1)


# kind -> (bundle, modality, input size, decoder tensors, reference(state, vit, x, days), extra CLI arguments)
KINDS = {
    "unetr_segmentation": ("fundus_vessel_segmentation", "Fundus", 512, lambda: unetr_shapes(1),
                           lambda t, vit, x, days: ref_unetr(t, dense_maps(vit, x), x), []),
    "linear_segmentation": ("fundus_vessel_segmentation", "Fundus", 512,
                            lambda: {"conv_seg.weight": (1, 4 * DIM, 1, 1), "conv_seg.bias": (1,)},
                            lambda t, vit, x, days: ref_linear_seg(t, dense_maps(vit, x), x), []),
    "landmarks": ("ubm_angle_landmark_detection", "UBM", 512, lambda: unetr_shapes(3),
                  lambda t, vit, x, days: ref_unetr(t, dense_maps(vit, x), x), []),
    "regression": ("fundus_biomarker_regression", "Fundus", 224,
                   lambda: {"channel_bn.weight": (4 * DIM,), "channel_bn.bias": (4 * DIM,),
                            "channel_bn.running_mean": (4 * DIM,), "channel_bn.running_var": (4 * DIM,),
                            "classifier.0.weight": (DIM, 4 * DIM), "classifier.0.bias": (DIM,),
                            "classifier.3.weight": (5, DIM), "classifier.3.bias": (5,)},
                   lambda t, vit, x, days: ref_bn_mlp(t, last_cls(vit, x), (0, 3)),
                   ["--class_names", "age,hba1c,systolic_bp,ldl,egfr"]),
    "multitask": ("fundus_multidisease_classification", "Fundus", 224,
                  lambda: {"channel_bn.weight": (4 * DIM,), "channel_bn.bias": (4 * DIM,),
                           "channel_bn.running_mean": (4 * DIM,), "channel_bn.running_var": (4 * DIM,),
                           "classifier.0.weight": (2 * DIM, 4 * DIM), "classifier.0.bias": (2 * DIM,),
                           "classifier.3.weight": (DIM, 2 * DIM), "classifier.3.bias": (DIM,),
                           "classifier.6.weight": (13, DIM), "classifier.6.bias": (13,)},
                  lambda t, vit, x, days: ref_bn_mlp(t, last_cls(vit, x), (0, 3, 6)), []),
    # the published design with a consistent width: the last block's CLS token (n_last_blocks 1), pe of that width
    "forecasting": ("fundus_glaucoma_forecasting", "Fundus", 224,
                    lambda: {"fc_1.weight": (1, DIM), "fc_1.bias": (1,)},
                    lambda t, vit, x, days: F.linear(last_cls(vit, x, 1) + torch.squeeze(original_pe(DIM)[days], 1),
                                                     t["fc_1.weight"], t["fc_1.bias"]), []),
}


def bundle_copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, dst)
    return dst


def write_original(tmp_path, kind, seed=0):
    """The decoder checkpoint as the original's scripts save it, and its encoder's pretraining file."""
    _, modality, size, shapes, _, _ = KINDS[kind]
    vit = random_ref_vit(seed, size)
    state = random_state(shapes(), seed + 1)
    saved = dict(state, pe=original_pe(DIM)) if kind == "forecasting" else state
    src = tmp_path / f"checkpoint_{kind}_linear.pth"
    torch.save({"epoch": 7, "state_dict": ddp(saved), "optimizer": {"state": {}}, "best_metric": 0.5}, src)
    encoder = save_pretraining_file(vit, tmp_path / f"VFM_{modality}_weights.pth")
    return src, encoder, vit, state


def bundle_network(bundle):
    from monai.bundle import ConfigParser

    from visionfm_core.encoders.weights import load_model_weights

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"arch": "vit_tiny", "bundle_root": str(bundle)})
    net = parser.get_parsed_content("network_def")
    load_model_weights(net, bundle / "models" / "model.pt")
    return net.eval(), parser


def run_import(src, bundle, modality, encoder, extra=()):
    main(["import-weights", str(src), "--modality", modality.lower(), "--bundle", str(bundle), "--arch", "vit_tiny",
          "--encoder_file", str(encoder), *extra])


@pytest.mark.parametrize("kind", list(KINDS))
def test_imported_decoder_equals_the_original(tmp_path, capsys, kind):
    name, modality, size, _, reference, extra = KINDS[kind]
    src, encoder, vit, state = write_original(tmp_path, kind)
    bundle = bundle_copy(tmp_path, name)
    run_import(src, bundle, modality, encoder, extra)
    assert "wrote" in capsys.readouterr().out
    settings = json.loads((bundle / "models" / "network.json").read_text())
    net, parser = bundle_network(bundle)
    assert parser.get_parsed_content("head") == settings["head"]  # the bundle reads the head variant from the file
    torch.manual_seed(2)
    x = torch.randn(1 if size > 224 else 2, 3, size, size)  # one 512 px image is enough for the dense decoders
    days = torch.tensor([30, 6499])
    with torch.no_grad():
        ours = net(x, days.float()) if kind == "forecasting" else net(x)
        expected = reference(state, vit, x, days)
    assert ours.shape == expected.shape
    difference = (ours - expected).abs().max().item()
    print(f"IMPORT {kind} -> {settings['head']}: max abs diff {difference:.3g} (outputs up to "
          f"{expected.abs().max().item():.3g})")
    assert difference <= 1e-4 and expected.abs().max() > 1e-2  # the outputs are not all near zero
    if kind == "regression":
        targets = json.loads((bundle / "models" / "targets.json").read_text())
        assert targets["target_names"] == ["age", "hba1c", "systolic_bp", "ldl", "egfr"]
        assert parser.get_parsed_content("target_names") == targets["target_names"]


def _more_outputs(state, key):
    state = dict(state)
    state[key] = torch.cat([state[key], state[key][:1]])
    state[key.replace("weight", "bias")] = torch.cat([state[key.replace("weight", "bias")], torch.zeros(1)])
    return state


# kind -> (how the checkpoint is spoiled, what the refusal must say)
BAD = {
    "unetr_segmentation": (lambda s: _more_outputs(s, "cls.weight"),
                           (r"does not fit fundus_vessel_segmentation \(original_unetr\): cls.weight: file "
                            r"\(2, 16, 1, 1\) vs bundle \(1, 16, 1, 1\)")),
    "linear_segmentation": (lambda s: {**s, "conv_seg.weight": s["conv_seg.weight"][:, : 3 * DIM]},
                            r"conv_seg.weight: file \(1, 576, 1, 1\) vs bundle \(1, 768, 1, 1\)"),
    "landmarks": (lambda s: {k.replace("s3.", "s9."): v for k, v in s.items()},
                  r"does not fit ubm_angle_landmark_detection \(original_landmarks\): unexpected s9.0.deconv.bias"),
    "regression": (lambda s: _more_outputs(s, "classifier.3.weight"),
                   r"classifier.3.weight has shape \(6, 192\), 6 outputs, but --class_names gives 5"),
    "multitask": (lambda s: _more_outputs(s, "classifier.6.weight"),
                  r"classifier.6.weight: file \(14, 192\) vs bundle \(13, 192\)"),
    "forecasting": (lambda s: {**s, "fc_1.weight": torch.randn(1, 3 * DIM + 7)},
                    r"fc_1.weight takes 583 features, which no number of the vit_tiny encoder's 192-wide blocks"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_decoder_that_does_not_fit_is_refused_and_nothing_is_written(tmp_path, kind):
    name, modality, _, _, _, extra = KINDS[kind]
    src, encoder, _, state = write_original(tmp_path, kind)
    spoil, message = BAD[kind]
    torch.save({"epoch": 1, "state_dict": ddp(spoil(state))}, src)
    bundle = bundle_copy(tmp_path, name)
    with pytest.raises(SystemExit, match=message) as refused:
        run_import(src, bundle, modality, encoder, extra)
    assert f"{src} [state_dict]" in str(refused.value)  # the file, the tensors (message) and the bundle are named
    assert not (bundle / "models").exists()


WRONG_FAMILY = [
    ("unetr_segmentation", "fundus_biomarker_regression",
     (r"holds the original's UNETR decoder .* which goes into a segmentation or landmarks bundle; "
      r"fundus_biomarker_regression is a regression bundle")),
    ("forecasting", "fundus_vessel_segmentation",
     r"holds the original's forecasting head .* which goes into a forecasting bundle"),
    ("linear_segmentation", "fundus_dr_classification",
     (r"holds the original's linear segmentation head .* which goes into a segmentation bundle, not "
      r"fundus_dr_classification")),
    ("multitask", "fundus_biomarker_regression",
     r"classifier layers at indices \[0, 3, 6\]; the original's regression head has them at \[0, 3\]"),
]


@pytest.mark.parametrize("kind,bundle_name,message", WRONG_FAMILY, ids=[f"{k}->{b}" for k, b, _ in WRONG_FAMILY])
def test_a_decoder_for_another_family_is_refused(tmp_path, kind, bundle_name, message):
    src, encoder, _, _ = write_original(tmp_path, kind)
    bundle = bundle_copy(tmp_path, bundle_name)
    with pytest.raises(SystemExit, match=message):
        run_import(src, bundle, "Fundus", encoder, ["--dataset", "idrid"] if "classification" in bundle_name else [])
    assert not (bundle / "models").exists()


def test_decoders_need_their_encoder_their_features_and_the_original_interval_table(tmp_path):
    src, encoder, _, state = write_original(tmp_path, "forecasting")
    bundle = bundle_copy(tmp_path, "fundus_glaucoma_forecasting")
    with pytest.raises(SystemExit, match="holds a decoder only, trained on a frozen encoder: pass that encoder"):
        main(["import-weights", str(src), "--modality", "fundus", "--bundle", str(bundle), "--arch", "vit_tiny"])
    multitask, _, _, _ = write_original(tmp_path, "multitask")
    with pytest.raises(SystemExit, match="--avgpool_patchtokens 1: the original trains this decoder on fixed"):
        run_import(multitask, bundle_copy(tmp_path, "fundus_multidisease_classification"), "Fundus", encoder,
                   ["--avgpool_patchtokens", "1"])
    torch.save({"state_dict": ddp({**state, "pe": torch.randn(6500, 1, DIM)})}, src)
    with pytest.raises(SystemExit, match="pe is not the original's sinusoidal interval table"):
        run_import(src, bundle, "Fundus", encoder)
    assert not (bundle / "models").exists()


def test_training_the_bundle_forgets_the_imported_decoder(tmp_path):
    from ignite.engine import Engine

    from visionfm_core.engine.writers import ImportedNetworkForgetter
    from visionfm_core.models import network_settings
    from visionfm_core.models.settings_file import write_network_settings

    write_network_settings(tmp_path, {"head": "original_unetr", "head_options": {}})
    engine = Engine(lambda e, b: None)
    ImportedNetworkForgetter(str(tmp_path)).attach(engine)
    engine.run([0], max_epochs=1)
    assert network_settings(tmp_path / "model.pt") == {}


@pytest.mark.parametrize("head,options", [("original_unetr", {}), ("original_linear_seg", {}),
                                          ("original_regression", {}), ("original_multitask", {})])
def test_original_decoders_script_and_export(tmp_path, head, options):
    """The bundle checks script and export the network: the original decoders must survive both (original_landmarks
    is original_unetr's class under the landmarks family's name)."""
    from tests_common import assert_scripts_and_exports
    from visionfm_core.models import VisionFMTaskModel

    torch.manual_seed(0)
    net = VisionFMTaskModel(head, 13 if head == "original_multitask" else 2, arch="vit_tiny", img_size=64,
                            head_options=options).eval()
    assert_scripts_and_exports(net, torch.randn(2, 3, 64, 64), tmp_path)


def test_original_forecasting_scripts_and_exports(tmp_path):
    import onnxruntime

    from tests_common import assert_close_to_scale
    from visionfm_core.tasks.forecasting import VisionFMForecastingModel

    torch.manual_seed(0)
    net = VisionFMForecastingModel(arch="vit_tiny", img_size=32, head="original_forecasting",
                                   head_options={"avgpool_patchtokens": 2, "n_last_blocks": 2}).eval()
    x, days = torch.randn(2, 3, 32, 32), torch.tensor([12.0, 4000.0])
    with torch.no_grad():
        expected = net(x, days)
        assert_close_to_scale(torch.jit.script(net)(x, days), expected)
    torch.onnx.export(net, (x, days), str(tmp_path / "m.onnx"), input_names=["image", "interval_days"],
                      dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.numpy(), "interval_days": days.numpy()})[0]
    assert_close_to_scale(torch.from_numpy(out), expected)


@pytest.mark.slow  # an export of the whole bundle
@pytest.mark.parametrize("kind", ["regression", "forecasting"])
def test_imported_decoder_bundle_exports(tmp_path, kind):
    """`visionfm export` builds the network from the bundle's inference.json: the imported decoder, unchanged."""
    from visionfm_core.tools.export import export_bundle

    name, modality, _, _, _, extra = KINDS[kind]
    src, encoder, _, _ = write_original(tmp_path, kind)
    bundle = bundle_copy(tmp_path, name)
    run_import(src, bundle, modality, encoder, extra)
    report = export_bundle(bundle, format="onnx", log=lambda *a: None, arch="vit_tiny")
    assert (bundle / "models" / "model.onnx").is_file()
    assert max(report["max_abs_difference"].values()) <= 1e-3
