"""OCT volume classification by attention MIL: the model (attention, any number of B-scans, slice order), the
slice sampler, the bundle's outputs (per-cube predictions, attention table and plots) and attention learning."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, run

from harness_volume_classification import OVERRIDES, make_cube, write_mil_dataset
from bundle_harness import TINY
from visionfm_core.tasks.volume_classification import attention_module, attention_plot, per_class_metrics
from visionfm_core.data import ImageReadError
from visionfm_core.tasks.volume_classification import CheckCubed, RandSampleSlicesd, VolumeMILModel, even_slice_indices
from tests_common import assert_close_to_scale

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "oct_volume_classification"
CLASSES = ["normal", "AMD", "DME"]


def tiny_model(**kwargs) -> VolumeMILModel:
    torch.manual_seed(0)
    return VolumeMILModel(3, arch="vit_tiny", img_size=32, **kwargs)


def attention_of(model: VolumeMILModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = []
    handle = attention_module(model).register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, torch.cat(seen)


@pytest.mark.parametrize("k", [1, 5, 9])
def test_attention_sums_to_one_with_one_weight_per_bscan(k):
    model = tiny_model(slice_batch_size=4).eval()  # 9 B-scans x 2 cubes: 5 encoder chunks
    x = torch.rand(2, 3, 32, 32, k)
    logits, weights = attention_of(model, x)
    assert logits.shape == (2, 3) and weights.shape == (2, k)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2), atol=1e-6) and (weights >= 0).all()
    # chunking the B-scans through the encoder changes nothing
    whole = VolumeMILModel(3, arch="vit_tiny", img_size=32, slice_batch_size=64).eval()
    whole.load_state_dict(model.state_dict())
    assert_close_to_scale(whole(x), logits)


def test_logits_do_not_depend_on_the_order_of_the_bscans():
    model = tiny_model().eval()
    x = torch.rand(2, 3, 32, 32, 7)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    logits, weights = attention_of(model, x)
    shuffled_logits, shuffled_weights = attention_of(model, x[..., order])
    assert_close_to_scale(shuffled_logits, logits)
    assert_close_to_scale(shuffled_weights, weights[:, order])  # each B-scan keeps its weight


def test_encoder_options_are_those_of_the_task_model():
    """The encoder sits at `encoder.*` like every VisionFMTaskModel: the optimiser's encoder lr scale, the encoder
    source note and weight loading see it; frozen, only the MIL head trains."""
    from visionfm_core.engine.optim import finetune_param_groups
    from visionfm_core.engine.run_notes import encoder_sources

    frozen = tiny_model()
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert [n["module"] for n in encoder_sources(frozen, checksum=False)] == [""]
    groups = finetune_param_groups(tiny_model(freeze_encoder=False), lr=1e-3, encoder_lr_scale=0.1)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([1e-4, 1e-3])


def test_two_dimensional_input_is_refused_clearly():
    with pytest.raises(ValueError, match=r"\(B, C, I, J, K\).*2-D image needs a 2-D bundle"):
        tiny_model().eval()(torch.rand(1, 3, 32, 32))


def test_bad_cubes_are_refused_naming_the_file():
    from monai.data import MetaTensor

    def check(array):
        CheckCubed("image")({"image": MetaTensor(array, meta={"filename_or_obj": "/data/P7.nii.gz"})})

    check(torch.rand(1, 8, 8, 3))
    for array, problem in [(torch.rand(1, 8, 8), "a 2-D image"), (torch.rand(3, 8, 8, 2), "one grey channel"),
                           (torch.rand(1, 8, 0, 4), "empty axis"), (torch.full((1, 4, 4, 2), float("nan")), "NaN")]:
        with pytest.raises(ImageReadError, match=f"/data/P7.nii.gz: .*{problem}"):
            check(array)


def test_slices_are_sampled_evenly_with_a_random_offset():
    assert even_slice_indices(12, 4).tolist() == [1, 4, 7, 10]  # centred in each third of the cube
    assert even_slice_indices(12, 4, offset=0.0).tolist() == [0, 3, 6, 9]
    assert even_slice_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # fewer B-scans than asked: repeated
    cube = torch.arange(49, dtype=torch.float32).reshape(1, 1, 1, 49).expand(1, 4, 4, 49)
    sampler = RandSampleSlicesd("image", num_slices=8)
    sampler.set_random_state(0)
    draws = [sampler({"image": cube}) for _ in range(5)]
    for d in draws:
        idx = d["image_slice_indices"]
        assert d["image"].shape == (1, 4, 4, 8) and (d["image"][0, 0, 0].numpy() == idx).all()
        assert np.all(np.diff(idx) >= 6) and np.all(np.diff(idx) <= 7)  # 49 / 8 apart
    assert len({tuple(d["image_slice_indices"]) for d in draws}) > 1  # a new offset per read
    fixed = RandSampleSlicesd("image", num_slices=8, prob=0.0)
    assert fixed({"image": cube})["image_slice_indices"].tolist() == even_slice_indices(49, 8).tolist()
    # evaluation: one cube at a time, a small cube read whole without repeats, 0 = every B-scan
    evaluation = RandSampleSlicesd("image", num_slices=8, prob=0.0, repeat=False)
    assert evaluation({"image": cube})["image_slice_indices"].tolist() == even_slice_indices(49, 8).tolist()
    assert evaluation({"image": cube[..., :5]})["image_slice_indices"].tolist() == [0, 1, 2, 3, 4]
    assert RandSampleSlicesd("image", num_slices=0)({"image": cube})["image"].shape[-1] == 49


def test_per_class_metrics_and_plot():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    m = per_class_metrics(probs, np.array([0, 1, 2, 1]), CLASSES)
    assert m["auroc_normal"] == 1.0 and m["sensitivity_AMD"] == 0.5 and m["precision_normal"] == 0.5
    assert m["support_AMD"] == 2
    png = attention_plot(np.array([0.1, 0.6, 0.2, 0.1]), [1, 2], "cube: AMD (0.90), 4 slices")
    assert png.shape == (320, 720, 3) and png.dtype == np.uint8
    assert (png == [210, 40, 40]).all(axis=-1).any()  # the top slices are drawn in red


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny bundle training run (1 epoch) on generated cubes."""
    root = tmp_path_factory.mktemp("oct_mil")
    datalist, signal = write_mil_dataset(root / "data", CLASSES)
    log = str(BUNDLE / "configs" / "logging.conf")
    data = dict(dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"), **TINY, **OVERRIDES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frozen random encoder warning
        run(config_file=str(BUNDLE / "configs" / "train.json"), logging_file=log, output_dir=str(root / "runs"),
            **data, **{"train::trainer::max_epochs": 1})
    return root, data, signal


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bundle_trains_evaluates_and_writes_attention_tables_and_plots(trained):
    root, data, signal = trained
    assert json.loads((root / "models" / "class_names.json").read_text())["class_names"] == CLASSES
    configs = [str(BUNDLE / "configs" / f) for f in ("train.json", "evaluate.json")]
    run(config_file=configs, logging_file=str(BUNDLE / "configs" / "logging.conf"), eval_dir=str(root / "eval"), **data)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert {"accuracy", "auroc", "auroc_AMD", "sensitivity_DME", "support_normal"} <= set(metrics)
    assert metrics["num_images"] == 3

    # inference on the test cubes plus a NaN-filled cube and a 2-D image: both listed as unreadable, the rest run
    import shutil

    import nibabel as nib

    cubes = sorted(p for p in signal if "/test/" in p)
    folder = root / "infer_in"
    folder.mkdir()
    for cube in cubes:
        shutil.copy(cube, folder)
    nib.save(nib.Nifti1Image(np.full((32, 32, 4), np.nan, np.float32), np.eye(4)), str(folder / "nan_cube.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), str(folder / "bscan_2d.nii.gz"))
    cubes = sorted(str(folder / Path(c).name) for c in cubes)
    out = root / "infer"
    infer = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "inference.json"), workflow_type="infer",
                           meta_file=str(BUNDLE / "configs" / "metadata.json"),
                           logging_file=str(BUNDLE / "configs" / "logging.conf"),
                           dataset_dir=str(folder),
                           ckpt_path=str(root / "models" / "model.pt"), output_dir=str(out),
                           **{**TINY, "batch_size": 1, "num_slices": 4})  # cubes of 6, 7 B-scans: one at a time
    infer.initialize()
    infer.run()
    infer.finalize()
    unreadable = read_csv(out / "unreadable.csv")
    assert sorted(Path(r["file"]).name for r in unreadable) == ["bscan_2d.nii.gz", "nan_cube.nii.gz"]
    assert any("NaN" in r["reason"] for r in unreadable) and any("2-D" in r["reason"] for r in unreadable)
    predictions = read_csv(out / "predictions.csv")
    assert sorted(r["image"] for r in predictions) == cubes
    assert all(r["pred_name"] in CLASSES and abs(sum(float(r[f"prob_{c}"]) for c in CLASSES) - 1) < 1e-4
               for r in predictions)
    rows = read_csv(out / "attention.csv")
    for cube in cubes:
        k = nib.load(cube).shape[-1]
        mine = [r for r in rows if r["volume"] == cube]
        # the bag of training's size (num_slices 4), spread evenly from the centred offset, named by cube index
        assert [int(r["slice"]) for r in mine] == even_slice_indices(k, 4).tolist()
        assert abs(sum(float(r["attention"]) for r in mine) - 1) < 1e-4
        assert sorted(int(r["rank"]) for r in mine) == list(range(1, 5))
        assert (out / "attention" / f"{Path(cube).name[:-len('.nii.gz')]}.png").is_file()
    # the writer's hook is gone after the run: the network still scripts
    network = infer.parser.get_parsed_content("network")
    assert not attention_module(network)._forward_hooks


def test_attention_moves_to_the_bscans_that_carry_the_class():
    """A head trained for a few epochs on a frozen (random) tiny encoder puts most attention on the 2 of 6 B-scans
    with the lesion-like blob (uniform attention would give them 1/3)."""
    from visionfm_core.modalities import get_modality

    oct_ = get_modality("OCT")

    def cubes(n, seed):
        rng = np.random.default_rng(seed)
        xs, ys, signal = [], [], []
        for i in range(n):
            slices = sorted(rng.choice(6, 2, replace=False).tolist())
            xs.append(make_cube(i % 3, 3, (32, 32, 6), slices, seed=100 * seed + i).astype(np.float32) / 255)
            ys.append(i % 3)
            signal.append(slices)
        x = (torch.tensor(np.stack(xs))[:, None].repeat(1, 3, 1, 1, 1) - oct_.mean[0]) / oct_.std[0]
        return x, torch.tensor(ys), signal

    x, y, _ = cubes(12, 1)
    test_x, test_y, test_signal = cubes(12, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frozen random encoder warning
        model = tiny_model(dropout=0.0).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(8):
        for i in range(0, 12, 6):
            loss = torch.nn.functional.cross_entropy(model(x[i: i + 6]), y[i: i + 6])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    _, weights = attention_of(model.eval(), test_x)
    mass = [float(weights[i, test_signal[i]].sum()) for i in range(12) if test_y[i] > 0]
    assert np.mean(mass) > 0.7, mass
