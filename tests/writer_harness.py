"""Fake ignite runs over small photos, for the tests of the families' per-image output writers."""

from __future__ import annotations

import csv

import numpy as np
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

H, W = 20, 30


def write_photo(path, seed=0, h=H, w=W) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(40, 200, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def image_tensor(path, h=H, w=W) -> MetaTensor:
    # what a decollated sample carries: the (resized) network input with the file name and original size in its meta
    return MetaTensor(torch.zeros(3, 16, 16), meta={"filename_or_obj": path, "spatial_shape": np.array((h, w))})


def run(samples_per_batch, writer, fail_at: int | None = None) -> Engine:
    def process(engine, batch):
        if fail_at is not None and engine.state.iteration == fail_at:
            raise RuntimeError("stopped midway")
        return batch

    engine = Engine(process)
    writer.attach(engine)
    engine.run(samples_per_batch, max_epochs=1)
    return engine


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
