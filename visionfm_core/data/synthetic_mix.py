"""Synthetic images in pretraining: a fixed share of every batch drawn from a folder of generated images.

VisionFM supplemented its pretraining corpus with generated images for the modalities with little data. Here
`synthetic_ratio` of every batch comes from `synthetic_dir` (round(ratio x batch size) images per batch, the same
in every batch), the rest from the real folder:

- `mix_synthetic` reads the synthetic folder with the real folder's settings (`UnlabelledImageDataset`: same
  modality check, size and canvas) and returns a `SyntheticMixDataset`, or the real dataset itself when the ratio
  is 0, so that a run without synthetic images is exactly the run it was before. It refuses a synthetic folder
  whose images are of mixed sizes (a generator writes one size) or whose short side is below the crop size (they
  would be upsampled), from the headers of a sample of the files (`check_synthetic_sizes`);
- `SyntheticMixSampler` orders the indices so that every run of `batch_size` of them is one mixed batch. An epoch is
  one pass over the real images (each at most once); the synthetic images are reshuffled each time they are used
  up, so a small synthetic folder is repeated. The order is a function of (seed, epoch), the same on every process;
  under torchrun each process takes every world-size-th batch. It is a `DistributedSampler` so that MONAI's
  workflow sets its epoch at every epoch start on every process, as it does for the plain one;
- `SyntheticShareReport` counts the real and synthetic images the trainer received (items carry a `synthetic`
  flag) and logs them with the share at the end of every epoch, in `engine.state.metrics` too (TensorBoard).
"""

from __future__ import annotations

import logging
import os
from typing import Sized

import torch
from ignite.engine import Engine, Events
from torch.utils.data import Dataset, DistributedSampler

from visionfm_core.data.unlabelled import UnlabelledImageDataset
from visionfm_core.engine import distributed

__all__ = ["SyntheticMixDataset", "SyntheticMixSampler", "SyntheticShareReport", "mix_synthetic", "train_sampler",
           "synthetic_per_batch", "check_synthetic_sizes"]
logger = logging.getLogger(__name__)

SIZE_SAMPLE = 64  # image headers read by check_synthetic_sizes (evenly spaced over the sorted files, + the last)
# load_size / image_size in the pretraining recipe (IBOTRecipe.load_size_factor): the crop size mix_synthetic
# assumes when it is not given one
_DEFAULT_LOAD_SIZE_FACTOR = 2.0


def _ratio(value) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"synthetic_ratio must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= ratio <= 1.0:  # NaN fails this too
        raise ValueError(f"synthetic_ratio must be in [0, 1] (the share of each batch drawn from synthetic_dir), "
                         f"got {value!r}")
    return ratio


def synthetic_per_batch(ratio: float, batch_size: int) -> int:
    """round(ratio x batch_size), refused when it drops the synthetic images (or, for a ratio < 1, the real ones)
    that the ratio asks for."""
    ratio, batch_size = _ratio(ratio), int(batch_size)
    n = round(ratio * batch_size)
    if 0 < ratio and n == 0:
        raise ValueError(f"synthetic_ratio {ratio} gives round({ratio} x {batch_size}) = 0 synthetic images in a batch "
                         f"of {batch_size}: use a ratio of at least {0.5 / batch_size:.3g} or a larger batch_size")
    if ratio < 1 and n == batch_size:
        raise ValueError(f"synthetic_ratio {ratio} gives round({ratio} x {batch_size}) = {batch_size} synthetic images "
                         f"in a batch of {batch_size}, no real image: use a lower ratio, a larger batch_size, or 1.0 "
                         "to train on synthetic images only")
    return n


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header (PIL reads no pixels here), or None for a file PIL does not open
    (DICOM, NIfTI: not what an image generator writes) or cannot read (the dataset skips those when training)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return tuple(im.size)  # type: ignore[return-value]
    except Exception:  # UnidentifiedImageError, OSError, ...: not an image PIL reads
        return None


def check_synthetic_sizes(files: list[str], folder: str, crop_size: int, sample: int = SIZE_SAMPLE) -> None:
    """Refuse a synthetic folder whose images (a deterministic sample of up to `sample` files, headers only) are
    of more than one size, or whose short side is below `crop_size`, the side of the global crops pretraining
    cuts: such images would be upsampled, the crops blurred. Messages name the folder and the files."""
    sample = max(1, int(sample))
    picked = files[:: max(1, len(files) // sample)][:sample]
    if files and files[-1] not in picked:
        picked[-1] = files[-1]  # the last file too: sorted names put a second generator run's images last
    sizes = [(path, size) for path in picked if (size := _header_size(path)) is not None]
    if not sizes:
        return
    first_path, first = sizes[0]
    for path, size in sizes[1:]:
        if size != first:
            raise ValueError(
                f"synthetic_dir {folder}: its images are not all the same size, as one image generator writes them: "
                f"{first_path} is {first[0]} x {first[1]} pixels but {path} is {size[0]} x {size[1]} (width x "
                "height). Were images of another generator or another run mixed in? Keep one generator's images "
                "in the folder.")
    if min(first) < crop_size:
        raise ValueError(
            f"synthetic_dir {folder}: its images are {first[0]} x {first[1]} pixels (e.g. {first_path}), smaller "
            f"than the {crop_size} x {crop_size} pixel crops pretraining cuts (image_size): they would be "
            f"upsampled, so the model would learn from blurred images. Generate images whose short side is at "
            f"least {crop_size} pixels (or pretrain with a smaller image_size).")


def _root(files: list[str]) -> str:
    """The folder that holds `files` (string work per file, one realpath: a folder may list a million files)."""
    return os.path.realpath(os.path.commonpath(list({os.path.dirname(os.path.abspath(f)) for f in files})))


class SyntheticMixDataset(Dataset):
    """The real images (indices 0 .. len(real) - 1), then the synthetic ones; every item is the source's item with
    `"synthetic": 0 or 1`. `files` are the real files (the folder a resumed run checks is the real one)."""

    def __init__(self, real: Dataset, synthetic: Dataset, ratio: float):
        self.real, self.synthetic, self.ratio = real, synthetic, _ratio(ratio)
        self.files = getattr(real, "files", None)

    @property
    def num_real(self) -> int:
        return len(self.real)  # type: ignore[arg-type]

    @property
    def num_synthetic(self) -> int:
        return len(self.synthetic)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_real + self.num_synthetic

    def __getitem__(self, index: int) -> dict:
        if index < self.num_real:
            return {**self.real[index], "synthetic": 0}
        return {**self.synthetic[index - self.num_real], "synthetic": 1}


def mix_synthetic(real: UnlabelledImageDataset, synthetic_dir: str | os.PathLike | None,
                  synthetic_ratio: float = 0.0, crop_size: int | None = None
                  ) -> UnlabelledImageDataset | SyntheticMixDataset:
    """`real` itself when `synthetic_ratio` is 0 (and no `synthetic_dir`), else the mix with the images under
    `synthetic_dir`, read as `real` reads its own (modality, size, aspect, JPEG decode size). Every mistake is an
    error here, before anything is trained or written: a ratio outside [0, 1], a ratio without a folder or a folder
    without a ratio, a missing or empty folder, images of another modality, images of mixed sizes or with a short
    side below `crop_size` (see `check_synthetic_sizes`), and folders inside one another (the real folder is read
    recursively: synthetic images under it would count as real).

    `crop_size`: the global crops' side, the recipe's `image_size`; by default `real.size` / 2, the recipe's
    default `load_size_factor` (the real dataset is read at `load_size` = load_size_factor x image_size)."""
    ratio = _ratio(synthetic_ratio)
    if synthetic_dir in (None, ""):
        if ratio > 0:
            raise ValueError(f"synthetic_ratio is {ratio} but no synthetic_dir is given: pass --synthetic_dir (a "
                             "folder of generated images) or leave synthetic_ratio at 0")
        return real
    folder = os.fspath(synthetic_dir)
    if ratio == 0:
        raise ValueError(f"synthetic_dir {folder} is given but synthetic_ratio is 0, so none of its images would be "
                         "used: pass --synthetic_ratio (e.g. 0.25), or leave synthetic_dir null")
    try:
        synthetic = UnlabelledImageDataset(folder, real.modality.name, size=real.size, max_aspect=real.max_aspect,
                                           decode_size=real.decode_size)
    except ValueError as e:
        raise ValueError(f"synthetic_dir {folder}: {e}") from None
    if crop_size is None:
        crop_size = max(1, int(round(real.size / _DEFAULT_LOAD_SIZE_FACTOR)))
    check_synthetic_sizes(synthetic.files, folder, int(crop_size))
    real_root, synthetic_root = _root(real.files), os.path.realpath(folder)
    if os.path.commonpath([real_root, synthetic_root]) in (real_root, synthetic_root):
        raise ValueError(f"synthetic_dir {folder} and the real images' folder {real_root} lie inside one another: "
                         "every image under the real folder is read as real, so keep the synthetic images apart")
    if distributed.is_main_process():  # once per run, not once per process
        logger.info("pretraining on %d real images with %d synthetic images from %s (synthetic_ratio %s of every "
                    "batch)", len(real), len(synthetic), folder, ratio)
    return SyntheticMixDataset(real, synthetic, ratio)


class SyntheticMixSampler(DistributedSampler):
    """Indices of a `SyntheticMixDataset` in mixed batches: every `batch_size` consecutive indices hold
    round(ratio x batch_size) synthetic images (after the real ones). Give the DataLoader the same `batch_size`.

    An epoch has len(real) // real-per-batch batches over all processes (len(synthetic) // batch_size for a ratio
    of 1), cut to a multiple of `num_replicas` so that every process runs as many iterations.
    """

    def __init__(self, dataset: SyntheticMixDataset, batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = int(batch_size)
        self.n_synthetic = synthetic_per_batch(dataset.ratio, self.batch_size)
        self.n_real = self.batch_size - self.n_synthetic
        total = dataset.num_real // self.n_real if self.n_real else dataset.num_synthetic // self.batch_size
        self.batches = total // num_replicas
        if self.batches == 0:
            source = (f"{dataset.num_real} real images ({self.n_real} per batch)" if self.n_real
                      else f"{dataset.num_synthetic} synthetic images")
            each = f" on each of {num_replicas} processes" if num_replicas > 1 else ""
            raise ValueError(f"{source} do not fill one batch of {self.batch_size}{each}: add images or lower "
                             "batch_size")

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # as DistributedSampler: same on every process
        n_batches = self.batches * self.num_replicas
        num_real, num_synthetic = self.dataset.num_real, self.dataset.num_synthetic
        real = torch.randperm(num_real, generator=g)[: n_batches * self.n_real]
        cycles = -(-n_batches * self.n_synthetic // num_synthetic)
        synthetic = torch.cat([torch.randperm(num_synthetic, generator=g) for _ in range(cycles)])
        synthetic = num_real + synthetic[: n_batches * self.n_synthetic]
        for j in range(self.rank, n_batches, self.num_replicas):
            yield from real[j * self.n_real : (j + 1) * self.n_real].tolist()
            yield from synthetic[j * self.n_synthetic : (j + 1) * self.n_synthetic].tolist()


def train_sampler(dataset: Sized, batch_size: int, seed: int = 0, distributed_run: bool = False):
    """The pretraining loader's sampler: `SyntheticMixSampler` for a mix (this process's share under torchrun);
    else MONAI's `DistributedSampler` under torchrun, else None (the DataLoader shuffles), as before the mix."""
    num_replicas, rank = (distributed.world_size(), distributed.rank()) if distributed_run else (1, 0)
    if isinstance(dataset, SyntheticMixDataset):
        return SyntheticMixSampler(dataset, batch_size, seed, num_replicas, rank)
    if distributed_run:
        from monai.data import DistributedSampler as MonaiDistributedSampler

        return MonaiDistributedSampler(dataset, even_divisible=True, shuffle=True)
    return None


class SyntheticShareReport:
    """Per epoch: the real and synthetic images the trainer received, summed over processes, as a log line and
    as `engine.state.metrics` `real_images`, `synthetic_images` and `synthetic_share` (which the stats and
    TensorBoard handlers attached after this one write). Does nothing when the loader's dataset is not a mix.
    Every process must run it (a sum over processes); only the main one logs."""

    def __init__(self, key: str = "synthetic", image_key: str = "image"):
        self.key, self.image_key = key, image_key
        self.counts = [0, 0]  # real, synthetic

    def attach(self, engine: Engine) -> None:
        loader = getattr(engine, "data_loader", None)
        if not isinstance(getattr(loader, "dataset", None), SyntheticMixDataset):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self.counts = [0, 0]

    def _count(self, engine: Engine) -> None:
        batch = engine.state.batch
        flags = torch.as_tensor(batch[self.key])
        synthetic = int(flags.sum())
        self.counts[0] += len(flags) - synthetic
        self.counts[1] += synthetic

    def _publish(self, engine: Engine) -> None:
        device = getattr(engine.state, "device", None) or "cpu"
        local = torch.tensor(self.counts, dtype=torch.float64, device=device)
        real, synthetic = (distributed.mean_over_processes(local) * distributed.world_size()).round().long().tolist()
        share = synthetic / max(real + synthetic, 1)
        engine.state.metrics.update(real_images=real, synthetic_images=synthetic, synthetic_share=share)
        if distributed.is_main_process():
            engine.logger.info("epoch %d: %d real + %d synthetic images, synthetic share %.3f", engine.state.epoch,
                               real, synthetic, share)
