"""Monitoring of a pretraining run: per-epoch means of the trainer's outputs and a k-NN probe.

`EpochAverages` turns the per-iteration outputs of `IBOTTrainer` (losses, lr, momentum, temperatures,
teacher entropy, KL(teacher || student)) into per-epoch means in `engine.state.metrics`, so StatsHandler and
TensorBoardStatsHandler log them with the epoch. `KNNProbe` measures how well the teacher's CLS embedding
separates the classes of a small labelled set (weighted k-NN on cosine similarity, as in DINO).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from visionfm_core.ssl.recipe import DEFAULT_RECIPE

__all__ = ["EpochAverages", "KNNProbe", "knn_accuracy", "knn_scores", "load_initial_weights"]
logger = logging.getLogger(__name__)


class EpochAverages:
    def __init__(self, prefix: str = "epoch_"):
        self.prefix = prefix
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        # before other EPOCH_COMPLETED handlers that read engine.state.metrics (stats, TensorBoard)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self.sums.clear()
        self.count = 0

    def _add(self, engine: Engine) -> None:
        output = engine.state.output
        values = output[0] if isinstance(output, (list, tuple)) else output
        for key, value in values.items():
            self.sums[key] += float(value)
        self.count += 1

    def _publish(self, engine: Engine) -> None:
        for key, total in self.sums.items():
            engine.state.metrics[self.prefix + key] = total / max(self.count, 1)


@torch.no_grad()
def knn_scores(train_features, train_labels, test_features, num_classes: int, k: int = 20,
               temperature: float = 0.07) -> torch.Tensor:
    """(N_test, num_classes) class scores of a similarity-weighted k-NN vote on L2-normalised features (DINO's
    weights exp(cos / temperature)), normalised to sum to 1 per image."""
    train_features, test_features = F.normalize(train_features, dim=1), F.normalize(test_features, dim=1)
    sim, idx = (test_features @ train_features.T).topk(min(k, len(train_features)), dim=1)
    # subtract each row's best similarity first: exp(1 / 0.07) is finite, but the sum must stay so for any temperature
    weights = ((sim - sim[:, :1]) / temperature).exp()
    votes = torch.zeros(len(test_features), num_classes).scatter_add_(1, train_labels[idx], weights)
    return votes / votes.sum(1, keepdim=True)


@torch.no_grad()
def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 20, temperature: float = 0.07):
    """Top-1 accuracy of a similarity-weighted k-NN vote on L2-normalised features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    votes = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return (votes.argmax(1) == test_labels).float().mean().item()


class KNNProbe:
    """Every `interval` epochs, embed a small labelled set with the teacher backbone and log k-NN accuracy
    (`engine.state.metrics["knn_top1"]`): the datalist's "training" images are the memory bank, its
    "validation" images the queries. With `datalist=None` the probe is off.

    Under torch.distributed only rank 0 embeds and scores (every process would compute the same number); the
    others wait for it in a broadcast of the accuracy, so all processes leave the probe together and hold the
    same metric. Keep the set small: the others wait up to the process group's timeout.
    """

    def __init__(self, datalist: str | None, modality: str, image_size: int = DEFAULT_RECIPE.image_size, k: int = 20,
                 interval: int = 1, batch_size: int = 32, name: str = "knn_top1", encoder: str = "visionfm"):
        # `encoder`: the family whose normalisation the images get (VisionFM's per-modality statistics by default)
        self.datalist, self.modality, self.image_size, self.encoder = datalist, modality, image_size, encoder
        self.k, self.interval, self.batch_size, self.name = k, interval, batch_size, name
        self.train_loader = self.val_loader = None  # made on first use (on rank 0 only under torch.distributed)

    def _loader(self, split: str):
        from monai.data import DataLoader, Dataset
        from monai.transforms import Compose

        from visionfm_core.data.datalist import load_datalist
        from visionfm_core.data.transforms import ValidateLabeld, eval_transforms

        # the evaluation preprocessing of every VisionFM pipeline: same reader, same resize as pretraining
        transform = Compose([eval_transforms(self.modality, self.image_size, encoder=self.encoder),
                             ValidateLabeld("label", 10**6)])
        return DataLoader(Dataset(load_datalist(self.datalist, split), transform), batch_size=self.batch_size)

    def attach(self, engine: Engine) -> None:
        if not self.datalist:
            return
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def embed(self, backbone: torch.nn.Module, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of one split of the datalist, through the evaluation preprocessing."""
        return self._embed(backbone, self._loader(split), device)

    @torch.no_grad()
    def _embed(self, backbone, loader, device):
        feats, labels = [], []
        for batch in loader:
            feats.append(backbone(batch["image"].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1).long())
        return torch.cat(feats), torch.cat(labels)

    def accuracy(self, backbone: torch.nn.Module, device: torch.device) -> float:
        """k-NN top-1 accuracy of `backbone`'s embedding on the labelled set (in this process)."""
        if self.train_loader is None:
            self.train_loader, self.val_loader = self._loader("training"), self._loader("validation")
        train = self._embed(backbone, self.train_loader, device)
        val = self._embed(backbone, self.val_loader, device)
        return knn_accuracy(*train, *val, k=self.k)

    def __call__(self, engine: Engine) -> None:
        from visionfm_core.engine.distributed import broadcast_from_main, is_main_process

        teacher = engine.checkpoint_dict()["teacher"]
        backbone = getattr(teacher, "backbone", teacher)
        device = next(backbone.parameters()).device
        accuracy = self.accuracy(backbone, device) if is_main_process() else 0.0
        engine.state.metrics[self.name] = broadcast_from_main(accuracy, device)
        if is_main_process():
            logger.info("epoch %d: k-NN top-1 accuracy %.4f", engine.state.epoch, engine.state.metrics[self.name])


def load_initial_weights(models, source: str | None, checkpoint_key: str = "teacher"):
    """Start pretraining from existing encoder weights (original VisionFM or ImageNet DINO, a local file):
    loaded into the student's and the teacher's backbones; the heads start fresh. Returns `models`."""
    if not source:
        return models
    from visionfm_core.encoders.weights import load_encoder_weights

    student, teacher = models
    logger.info("%s", load_encoder_weights(student.backbone, source, checkpoint_key))
    load_encoder_weights(teacher.backbone, source, checkpoint_key)
    return models
