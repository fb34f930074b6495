"""MONAI model-zoo checks for every bundle under bundles/, offline, on tiny overrides (seconds per bundle)."""

import json
import re
import tempfile

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, onnx_export, run, verify_metadata, verify_net_in_out

import visionfm_core
from bundle_harness import (BUNDLES, SCHEMA, TINY, config, export_shapes, forward_args, make_data, metadata,
                            one_per_kind_fast, plugin, scriptable, tiny, tiny_meta_file)
from tests_common import assert_close_to_scale

every_bundle = pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
REQUIRED = ["LICENSE", "configs/metadata.json", "configs/inference.json", "configs/multi_gpu_train.json",
            "configs/logging.conf", "docs/README.md"]


def training_configs(bundle) -> list[str]:
    """train.json, or the stages of a bundle trained in several (a plugin's CONFIGS, e.g. the generation family)."""
    return [f"configs/{name}.json" for name in getattr(plugin(bundle), "CONFIGS", ("train",))]


def tiny_network(bundle, **overrides):
    parser = ConfigParser()
    parser.read_config(config(bundle, "inference"))
    parser.update({**tiny(bundle), **overrides})
    return parser.get_parsed_content("network_def")


@every_bundle
def test_layout_and_metadata(bundle):
    missing = [f for f in REQUIRED + training_configs(bundle) if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"
    assert re.fullmatch(r"[a-z]+_[a-z0-9_]+_[a-z]+", bundle.name), "folder must be <modality>_<target>_<task>"
    meta = metadata(bundle)
    assert meta["version"] in meta["changelog"]
    assert meta["required_packages_version"]["visionfm-core"] == visionfm_core.__version__
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    for cfg in bundle.glob("configs/*.json"):
        json.loads(cfg.read_text())  # every config is valid JSON
    assert "[handler_" in (bundle / "configs" / "logging.conf").read_text()


@every_bundle
def test_network_input_output(bundle, tmp_path):
    verify_net_in_out(net_id="network_def", meta_file=tiny_meta_file(bundle, tmp_path),
                      config_file=config(bundle, "inference"), device="cpu", n=2, p=1, any=32,
                      extra_forward_args=forward_args(bundle, 1), **tiny(bundle))


# exports take seconds each: one bundle per kind in the fast suite, every bundle in CI's slow run
@pytest.mark.parametrize("bundle", one_per_kind_fast(BUNDLES))
def test_torchscript_and_onnx_export(bundle, tmp_path, monkeypatch):
    """model-zoo's verifier scripts the network (torch.jit.script, not trace); the scripted file must also take an
    input size it was not exported at. ONNX is the path for runtimes without TorchScript."""
    # MONAI's onnx_export exports into a NamedTemporaryFile; torch's exporter writes the weights beside it as
    # <name>.data, which nothing deletes: keep that file inside tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    torch.manual_seed(0)
    net = tiny_network(bundle).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    channels = metadata(bundle)["network_data_format"]["inputs"]["image"]["num_channels"]
    shapes = export_shapes(bundle, channels)
    x, extra = torch.rand(*shapes[0]), forward_args(bundle, shapes[0][0])
    common = dict(net_id="network_def", ckpt_file=str(ckpt), meta_file=str(bundle / "configs" / "metadata.json"),
                  config_file=config(bundle, "inference"), **tiny(bundle))
    if scriptable(bundle):
        ckpt_export(filepath=str(tmp_path / "model.ts"), use_trace=False, **common)
        scripted = torch.jit.load(str(tmp_path / "model.ts"))
        assert isinstance(scripted, torch.jit.ScriptModule)
        with torch.no_grad():
            for shape in shapes:
                x_any, extra_any = torch.rand(*shape), forward_args(bundle, shape[0])
                assert_close_to_scale(scripted(x_any, **extra_any), net(x_any, **extra_any), msg=str(shape))
    with torch.no_grad():
        expected = net(x, **extra)
    if extra:  # MONAI's onnx_export feeds the image only: export the network's full signature directly
        torch.onnx.export(net, (x, *extra.values()), str(tmp_path / "model.onnx"), dynamo=False,
                          input_names=["image", *extra])
    else:
        onnx_export(filepath=str(tmp_path / "model.onnx"), input_shape=list(shapes[0]), use_trace=True,
                    **common)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, *extra.values()))}
    out = session.run(None, feeds)[0]
    assert abs(out - expected.numpy()).max() < 1e-3


@every_bundle
def test_properties_train_evaluate_and_infer(bundle, tmp_path):
    if hasattr(plugin(bundle), "train_and_infer"):  # several training stages: the plugin runs them in order
        out = plugin(bundle).train_and_infer(bundle, tmp_path)
        assert any(out.iterdir()), "inference wrote no output"
        return
    spec = make_data(bundle, tmp_path)
    data, infer_dir = spec["train"], spec["infer_dir"]
    paths = dict(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    meta, log = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "logging.conf")

    train = ConfigWorkflow(config_file=config(bundle, "train"), meta_file=meta, logging_file=log,
                           workflow_type="train", **TINY, **data, **paths)
    train.initialize()
    assert not train.check_properties(), "train.json lacks MONAI's required train properties"

    run(config_file=config(bundle, "train"), logging_file=log, **TINY, **data, **paths,
        **{"train::trainer::max_epochs": 1})
    model = tmp_path / "models" / spec["trained"]
    assert model.is_file(), f"training did not save models/{spec['trained']}"

    if (bundle / "configs" / "evaluate.json").is_file():
        run(config_file=[config(bundle, "train"), config(bundle, "evaluate")], logging_file=log, **TINY, **data,
            ckpt_dir=str(tmp_path / "models"), eval_dir=str(tmp_path / "eval"))
        assert (tmp_path / "eval" / "metrics.json").is_file()

    infer_overrides = {"dataset_dir": infer_dir, "ckpt_path": str(model), "output_dir": str(tmp_path / "infer"),
                       **TINY, **spec.get("infer", {})}  # the bundle's own overrides win over TINY
    infer = ConfigWorkflow(config_file=config(bundle, "inference"), meta_file=meta, logging_file=log,
                           workflow_type="infer", **infer_overrides)
    infer.initialize()
    assert not infer.check_properties(), "inference.json lacks MONAI's required inference properties"
    infer.run()
    infer.finalize()
    assert any((tmp_path / "infer").iterdir()), "inference wrote no output"
