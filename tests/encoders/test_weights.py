import argparse
import os
import pickle

import pytest
import torch

from visionfm_core import WeightsError, build_encoder, load_encoder_weights, save_encoder_weights
from visionfm_core.tools.cli import main as cli_main
from visionfm_core.encoders.weights import ORIGINAL_LICENCE, read_checkpoint


def original_pretraining_checkpoint(arch="vit_tiny", img_size=224):
    """A checkpoint laid out like the released VisionFM pretraining files (teacher, DDP student, args ...)."""
    torch.manual_seed(0)
    teacher = build_encoder(arch, img_size=img_size)
    student = build_encoder(arch, img_size=img_size, masked_im_modeling=True)
    head = {"head.mlp.0.weight": torch.randn(16, teacher.embed_dim), "head.last_layer.weight_g": torch.ones(8, 1)}
    return {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": 400,
        "args": argparse.Namespace(arch=arch, patch_size=16, out_dim=8192),
        "ibot_loss": {"center": torch.zeros(1, 8192), "center2": torch.zeros(1, 1, 8192)},
        "fp16_scaler": {"scale": 65536.0},
    }, teacher, student


def test_full_pretraining_checkpoint_teacher_and_student(tmp_path):
    ckpt, teacher, student = original_pretraining_checkpoint()
    path = tmp_path / "VFM_Fundus_weights.pth"
    torch.save(ckpt, path)
    enc = build_encoder("vit_tiny")
    report = load_encoder_weights(enc, path)
    assert report.entry == "teacher" and len(report.loaded) == len(enc.state_dict())
    assert report.ignored == ["head.last_layer.weight_g", "head.mlp.0.weight"]
    for k, v in teacher.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v)
    mim = build_encoder("vit_tiny", masked_im_modeling=True)
    report = load_encoder_weights(mim, str(path), checkpoint_key="student")
    assert report.entry == "student" and "masked_embed" in report.loaded
    assert torch.equal(mim.masked_embed, student.masked_embed)
    assert "loaded" in str(report)


def test_original_weights_give_timm_the_same_cls_output(tmp_path, timm):
    ckpt, _, _ = original_pretraining_checkpoint("vit_base")
    path = tmp_path / "VFM_Fundus_weights.pth"
    torch.save(ckpt, path)
    ours = build_encoder("vit_base").eval()
    load_encoder_weights(ours, path)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    backbone = {k[len("backbone."):]: v for k, v in ckpt["teacher"].items() if k.startswith("backbone.")}
    ref.load_state_dict(backbone, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-4


def test_other_layouts_bare_finetuned_and_dino(tmp_path):
    torch.manual_seed(1)
    src = build_encoder("vit_tiny")
    bare = src.state_dict()
    finetuned = {"epoch": 5, "classifier_state_dict": {"module.linear.weight": torch.zeros(2, 2)},
                 "visionfm_state_dict": bare, "optimizer": {}, "scheduler": {}, "best_auc": 0.9}
    dino_imagenet = {**bare, "head.weight": torch.zeros(1000, 192)}  # a timm/DINO file with a classifier
    for obj, entry in [(bare, "state dict"), (finetuned, "visionfm_state_dict"), (dino_imagenet, "state dict")]:
        enc = build_encoder("vit_tiny")
        report = load_encoder_weights(enc, obj)
        assert report.entry == entry
        assert all(torch.equal(enc.state_dict()[k], v) for k, v in bare.items())


def test_pos_embed_resized_for_larger_inputs():
    src = build_encoder("vit_tiny", img_size=224)
    enc = build_encoder("vit_tiny", img_size=512)
    report = load_encoder_weights(enc, src.state_dict())
    assert report.resized["pos_embed"] == ((1, 197, 192), (1, 1025, 192))
    assert torch.equal(enc.cls_token, src.cls_token)
    assert torch.allclose(enc.pos_embed[:, 0], src.pos_embed[:, 0])


def test_other_architecture_and_missing_keys_are_refused():
    enc = build_encoder("vit_base")
    with pytest.raises(WeightsError, match="shape mismatches.*another architecture"):
        load_encoder_weights(enc, build_encoder("vit_small").state_dict())
    partial = {k: v for k, v in build_encoder("vit_tiny").state_dict().items() if not k.startswith("blocks.11")}
    with pytest.raises(WeightsError, match=r"12 encoder keys missing \(e.g. blocks.11.norm1.weight"):
        load_encoder_weights(build_encoder("vit_tiny"), partial)
    with pytest.raises(WeightsError, match="no encoder weights found"):
        load_encoder_weights(enc, {"epoch": 3, "args": argparse.Namespace()})


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['VFM_EXPLOIT_MARKER']}",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VFM_EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"teacher": build_encoder("vit_tiny").state_dict(), "payload": _Exploit()}, path)
    with pytest.raises(WeightsError, match=r"evil.pth: cannot be loaded safely: it contains the global 'os.system', "
                                           r"which is not allowed") as info:
        load_encoder_weights(build_encoder("vit_tiny"), path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)  # never the advice to turn it off
    assert not marker.exists()
    # a plain pickle (not torch.save's format) is scanned for the same globals without being unpickled
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"payload": _Exploit()}, f)
    with pytest.raises(WeightsError, match=r"evil.pkl: cannot be loaded safely: it contains the global 'os.system'"):
        read_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()
    # unpickled unsafely, the same object does run the command: the exploit in this test is real
    assert pickle.loads(pickle.dumps(_Exploit())) == 0 and marker.exists()


def test_unreadable_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="empty.pth is empty"):
        read_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="junk.pth: cannot be read as a PyTorch file") as info:
        read_checkpoint(tmp_path / "junk.pth")
    assert "weights_only" not in str(info.value) and "malicious" not in str(info.value)
    with pytest.raises(WeightsError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")


def test_import_weights_command_writes_a_backbone_with_header(tmp_path, capsys):
    ckpt, teacher, _ = original_pretraining_checkpoint("vit_tiny")
    src = tmp_path / "VFM_Fundus_weights.pth"
    torch.save(ckpt, src)
    out = tmp_path / "fundus_encoder.pt"
    cli_main(["import-weights", str(src), "--modality", "fundus", "--out", str(out), "--arch", "vit_tiny"])
    saved = read_checkpoint(out)
    header = saved["visionfm_encoder"]
    assert header["modality"] == "Fundus" and header["source"] == "VFM_Fundus_weights.pth"
    assert header["licence"] == ORIGINAL_LICENCE and len(header["sha256"]) == 64
    assert set(saved["state_dict"]) == set(teacher.state_dict())
    enc = build_encoder("vit_tiny")
    assert load_encoder_weights(enc, out).entry == "state_dict"
    assert torch.equal(enc.pos_embed, teacher.pos_embed)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Unknown modality"):
        cli_main(["import-weights", str(src), "--modality", "xray", "--out", str(tmp_path / "x.pt")])
    assert not (tmp_path / "x.pt").exists()


def test_modality_in_the_header_is_checked(tmp_path, caplog):
    torch.manual_seed(0)
    src = build_encoder("vit_tiny", img_size=32)
    path = tmp_path / "oct_encoder.pt"
    save_encoder_weights(src, path, modality="OCT")
    enc = build_encoder("vit_tiny", img_size=32)
    with pytest.raises(WeightsError) as info:
        load_encoder_weights(enc, path, expected_modality="fundus")
    message = str(info.value)
    assert "oct_encoder.pt" in message and "OCT" in message and "Fundus" in message
    assert "allow_modality_mismatch" in message
    assert not torch.equal(enc.pos_embed, src.pos_embed)  # refused before anything was loaded
    with caplog.at_level("WARNING", logger="visionfm_core.encoders.weights"):
        report = load_encoder_weights(enc, path, expected_modality="Fundus", allow_modality_mismatch=True)
    assert report.modality == "OCT" and "using it anyway" in caplog.text.lower()
    assert torch.equal(enc.pos_embed, src.pos_embed)
    # the same modality under an alias, no expectation, or a file that declares nothing: accepted
    assert load_encoder_weights(enc, path, expected_modality="oct_bscan").modality == "OCT"
    assert "(OCT encoder)" in str(load_encoder_weights(enc, path))
    assert load_encoder_weights(enc, src.state_dict(), expected_modality="Fundus").modality is None
    with pytest.raises(ValueError, match="Unknown modality 'xray'"):
        load_encoder_weights(enc, path, expected_modality="xray")


def test_modality_of_pretraining_checkpoints_and_original_release_names(tmp_path):
    ckpt, _, _ = original_pretraining_checkpoint("vit_tiny", img_size=32)
    enc = build_encoder("vit_tiny", img_size=32)
    # an original release file says its modality only through its name
    torch.save(ckpt, tmp_path / "VFM_OCT_weights.pth")
    with pytest.raises(WeightsError, match=r"VFM_OCT_weights.pth holds an encoder for OCT.*modality is Fundus"):
        load_encoder_weights(enc, tmp_path / "VFM_OCT_weights.pth", expected_modality="Fundus")
    assert load_encoder_weights(enc, tmp_path / "VFM_OCT_weights.pth", expected_modality="OCT").modality == "OCT"
    # this project's pretraining checkpoints carry a header of their own
    ours = dict(ckpt, visionfm_pretraining={"modality": "UBM", "arch": "vit_tiny", "epoch": 3})
    with pytest.raises(WeightsError, match="encoder for UBM images.*modality is Ultrasound"):
        load_encoder_weights(enc, ours, expected_modality="ultrasound")
