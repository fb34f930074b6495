"""Quality and privacy of synthetic images, whatever made them: Fréchet distance and k-NN precision/recall in the
feature space of a VisionFM encoder, and a memorisation check (is a synthetic image a near-copy of a training one?).

No Inception weights can be downloaded, so the feature space is a VisionFM encoder's CLS embedding (`--encoder
encoder.pt`, ideally the encoder of this modality); without one a randomly initialised encoder is used and the
report says so: its numbers describe a random projection of the pixels, useful to compare runs with each other,
not with published FIDs.

Memorisation: for every synthetic image the training images nearest by cosine similarity of the encoder features
are found; the pixel SSIM (scikit-image, Wang et al. 2004 settings) of the synthetic image with each of the
`ssim_candidates` nearest is computed on grey images resized to `ssim_size` px. A synthetic image is flagged as a
near-copy when the SSIM of its closest pair reaches `SSIM_THRESHOLD` (see there for the choice), or, when asked
for with a trained encoder, when the cosine similarity to its nearest training image reaches `cosine_threshold`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial.distance import cdist
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from sklearn.neighbors import NearestNeighbors

from visionfm_core.data.io.readers import ImageReadError, count_slices, list_images, read_image
from visionfm_core.data.resize import resize
from visionfm_core.data.unlabelled import check_modality_of_images
from visionfm_core.encoders.vit import build_encoder
from visionfm_core.encoders.weights import declared_header, load_encoder_weights, read_checkpoint, sha256sum
from visionfm_core.modalities import get_modality

__all__ = ["SynthError", "FeatureSet", "SSIM_THRESHOLD", "COSINE_THRESHOLD", "REPORT_KIND", "list_items",
           "equal_sizes", "bootstrap_intervals",
           "load_feature_encoder", "extract_features", "frechet_distance", "knn_precision_recall", "grey_image",
           "pair_ssim", "memorisation", "check_sizes", "check_folder_modality", "synth_report"]
logger = logging.getLogger(__name__)

REPORT_KIND = "visionfm_synth_report"
# Near-copy thresholds. SSIM >= 0.90 is the usual "near-duplicate" line (identical images score 1). It is computed
# on grey images shrunk to SSIM_SIZE = 32 px (antialiased): a copy that a generator reproduces with fresh speckle or
# slightly blurred must still count as a copy, so the comparison is of layout (vessels, layers, globe), not of the
# finest texture. Measured on 64 px phantoms (tests/synth/test_synth_quality.py; SSIM of the closest of 8 training images):
#                     blurred copy (Gaussian sigma 1)   unrelated phantom   two different training phantoms
#   OCT, 32 px        0.956                             0.809               0.822
#   fundus, 32 px     0.971                             0.389               0.363
#   UBM, 32 px        0.942                             0.574               0.643
#   OCT, 64 px        0.588                             0.352               0.355  (speckle: a blur is lost at 64 px)
# The cosine rule (features barely move when a copy is shifted or re-coloured) is off by default: it is only
# evidence with a trained encoder of the modality, which the tests do not have; a random ViT-Ti gave an unrelated
# OCT phantom cosine 0.984 to its nearest training phantom. Pass e.g. cosine_threshold=0.98 with a trained encoder.
SSIM_THRESHOLD = 0.90
COSINE_THRESHOLD = None
SSIM_CANDIDATES = 5  # feature-nearest training images compared in pixels with each synthetic image
SSIM_SIZE = 32  # px, see above


class SynthError(ValueError):
    """Bad input to the synthetic-image checks (wrong modality or size, too few images); names the folder or file."""


Item = tuple[str, "int | None"]  # (file, slice of a volume or None)


@dataclass
class FeatureSet:
    """The encoder's CLS embeddings of a folder's readable images, in the order of `items`."""

    folder: str
    items: list[Item]
    features: np.ndarray  # (N, D) float64
    skipped: list[str] = field(default_factory=list)  # why each unreadable file was passed over


def list_items(folder: str | os.PathLike) -> list[Item]:
    """Every image under `folder` (recursively), every slice of a volume, as (file, slice or None)."""
    try:
        files = list_images(folder)
    except ValueError as e:
        raise SynthError(str(e)) from None
    items: list[Item] = []
    for path in files:
        try:
            n = count_slices(path)
        except ImageReadError:
            n = 1  # unreadable: extract_features skips and counts it
        items += [(path, i) for i in range(n)] if n > 1 else [(path, None)]
    return items


def _item_name(item: Item) -> str:
    path, index = item
    return path if index is None else f"{path}[slice {index}]"


def load_feature_encoder(path: str | os.PathLike | None, modality: str, arch: str | None = None,
                         patch_size: int | None = None, image_size: int = 224, seed: int = 0,
                         allow_modality_mismatch: bool = False) -> tuple[torch.nn.Module, dict]:
    """The encoder that defines the feature space, in eval mode, and a description of it for the report.

    With `path`: arch and patch size come from the file's header when it has one (else vit_base/16 unless given);
    a file declaring another modality is refused (unless `allow_modality_mismatch`). Without: a randomly
    initialised encoder (seeded, so two reports with the same settings share one feature space)."""
    info: dict = {"image_size": int(image_size)}
    if path is not None:
        path = os.fspath(path)
        header = declared_header(read_checkpoint(path)) or {}
        arch = arch or header.get("arch") or "vit_base"
        patch_size = int(patch_size or header.get("patch_size") or 16)
        encoder = build_encoder(arch, patch_size, img_size=image_size)
        report = load_encoder_weights(encoder, path, expected_modality=modality,
                                      allow_modality_mismatch=allow_modality_mismatch)
        info.update(weights="file", path=os.path.abspath(path), sha256=sha256sum(path),
                    declared_modality=report.modality)
    else:
        arch, patch_size = arch or "vit_base", int(patch_size or 16)
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            encoder = build_encoder(arch, patch_size, img_size=image_size)
        info.update(weights="random init", path=None, sha256=None, seed=seed,
                    note="no --encoder given: a randomly initialised encoder. Its numbers compare runs made with the "
                         "same settings; they are not a trained VisionFM feature space.")
    info.update(arch=arch, patch_size=patch_size)
    return encoder.eval(), info


def extract_features(items: list[Item], encoder: torch.nn.Module, modality: str, image_size: int, folder: str = "",
                     batch_size: int = 32, device: str | torch.device | None = None) -> FeatureSet:
    """CLS embeddings of every readable item: `read_image` (the modality's channel rules), the common resize to
    image_size x image_size, the modality's normalisation. Unreadable files are skipped with a warning and listed."""
    m = get_modality(modality)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = encoder.to(device).eval()
    mean, std = torch.tensor(m.mean).view(3, 1, 1), torch.tensor(m.std).view(3, 1, 1)
    kept, skipped, batch, chunks = [], [], [], []

    def flush():
        chunks.append(encoder(torch.stack(batch).to(device)).double().cpu().numpy())
        batch.clear()

    with torch.inference_mode():
        for item in items:
            try:
                image = torch.from_numpy(read_image(item[0], m, item[1]))
            except ImageReadError as e:
                logger.warning("skipping unreadable image: %s", e)
                skipped.append(str(e))
                continue
            batch.append((resize(image, image_size) - mean) / std)
            kept.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    features = np.concatenate(chunks) if chunks else np.zeros((0, getattr(encoder, "embed_dim", 0)))
    return FeatureSet(folder=folder, items=kept, features=features, skipped=skipped)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D): |mu_a - mu_b|^2 + tr(S_a + S_b -
    2 (S_a S_b)^(1/2)), the formula of FID (Heusel et al. 2017) in another feature space.

    The matrix square root is never formed: tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of
    S_a S_b, which are those of S_a^(1/2) S_b S_a^(1/2) (D x D, symmetric) and, when there are fewer images than
    dimensions, the squared singular values of A B^T / sqrt((N_a - 1)(N_b - 1)) with A, B the centred features
    (N_a x N_b). Both are exact (the reference FID code's general square root needs a fallback for the singular
    covariances of N < D) and fast enough for bootstrap intervals at D = 768."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise SynthError(f"Fréchet distance needs two (N >= 2, D) feature sets of one width, got {a.shape} and "
                         f"{b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    if len(a) * len(b) <= a.shape[1] ** 2:  # few images: the (N_a x N_b) cross-product
        trace_covmean = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / np.sqrt(na * nb)
    else:
        s_a, s_b = ca.T @ ca / na, cb.T @ cb / nb
        w, v = np.linalg.eigh(s_a)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        trace_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum())
    diff = mu_a - mu_b
    total_variance = float((ca ** 2).sum()) / na + float((cb ** 2).sum()) / nb
    return max(0.0, float(diff @ diff) + total_variance - 2 * trace_covmean)


def _within_manifold(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    inside = np.zeros(len(queries), bool)
    for start in range(0, len(queries), chunk):
        d = cdist(queries[start:start + chunk], support)
        inside[start:start + chunk] = (d <= radii[None, :]).any(1)
    return inside


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    # k + 1 neighbours: the first is the point itself
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return distances[:, k]


def knn_precision_recall(real: np.ndarray, synth: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
    its points with the distance to the point's k-th nearest neighbour (in the same set) as radius. Precision: the
    share of synthetic samples inside the real manifold (fidelity); recall: the share of real samples inside the
    synthetic manifold (diversity)."""
    real, synth = np.asarray(real, np.float64), np.asarray(synth, np.float64)
    if min(len(real), len(synth)) <= k:
        raise SynthError(f"k-NN precision/recall with k={k} needs more than {k} images in each folder, got "
                         f"{len(real)} real and {len(synth)} synthetic")
    precision = _within_manifold(synth, real, _knn_radii(real, k)).mean()
    recall = _within_manifold(real, synth, _knn_radii(synth, k)).mean()
    return float(precision), float(recall)



def equal_sizes(real: np.ndarray, synth: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets at the size of the smaller one (a seeded random subset of the larger): the Fréchet distance
    and k-NN recall depend strongly on N (two samples of one 64-d Gaussian: FD 43.4 at N = 50, 2.2 at N = 1000),
    so only equal numbers compare."""
    n = min(len(real), len(synth))
    rng = np.random.default_rng(seed)

    def take(x):
        return x if len(x) == n else x[np.sort(rng.choice(len(x), n, replace=False))]

    return take(np.asarray(real)), take(np.asarray(synth))


def bootstrap_intervals(real: np.ndarray, synth: np.ndarray, k: int = 3, rounds: int = 200,
                        seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals of the Fréchet distance (both sets resampled with replacement) and of
    k-NN precision and recall (the evaluated samples resampled; the manifolds stay those of the full sets, since a
    resampled set's duplicates would have zero k-NN radii)."""
    real, synth = np.asarray(real, np.float64), np.asarray(synth, np.float64)
    rng = np.random.default_rng(seed)
    inside_real = _within_manifold(synth, real, _knn_radii(real, k))  # per synthetic sample: precision
    inside_synth = _within_manifold(real, synth, _knn_radii(synth, k))  # per real sample: recall
    fd, precision, recall = [], [], []
    for _ in range(rounds):
        r, s_ = rng.integers(0, len(real), len(real)), rng.integers(0, len(synth), len(synth))
        fd.append(frechet_distance(real[r], synth[s_]))
        precision.append(inside_real[s_].mean())
        recall.append(inside_synth[r].mean())

    def ci(values):
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    return {"frechet_distance": ci(fd), "precision": ci(precision), "recall": ci(recall)}


def grey_image(item: Item, modality: str, size: int = SSIM_SIZE) -> np.ndarray:
    """(size, size) float grey image in [0, 1] for SSIM: the modality's channel rules, luminance, the common resize."""
    rgb = read_image(item[0], modality, item[1])
    return resize(rgb2gray(np.moveaxis(rgb, 0, -1))[None].astype(np.float32), size)[0]


def pair_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two grey [0, 1] images of one size with the settings of Wang et al. 2004 (Gaussian window, sigma 1.5)."""
    return float(structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def memorisation(real: FeatureSet, synth: FeatureSet, modality: str, ssim_threshold: float = SSIM_THRESHOLD,
                 cosine_threshold: float | None = COSINE_THRESHOLD, ssim_size: int = SSIM_SIZE,
                 ssim_candidates: int = SSIM_CANDIDATES, chunk: int = 1024) -> list[dict]:
    """For every synthetic image: its nearest training image by feature cosine similarity, and among its
    `ssim_candidates` nearest the one most similar in pixels (SSIM). Flagged when that SSIM >= `ssim_threshold`
    or the nearest cosine >= `cosine_threshold` (None: cosine not used, e.g. for a random encoder)."""
    if not len(real.items) or not len(synth.items):
        raise SynthError("the memorisation check needs readable images in both folders")
    n = min(ssim_candidates, len(real.items))
    real_grey: dict[int, np.ndarray] = {}  # several synthetic images often share their nearest training images
    rows = []
    for start in range(0, len(synth.items), chunk):
        sims = _cosine(synth.features[start:start + chunk], real.features)
        order = np.argsort(-sims, axis=1)[:, :n]
        for row, (s, candidates) in enumerate(zip(sims, order)):
            item = synth.items[start + row]
            grey = grey_image(item, modality, ssim_size)
            scores = []
            for j in candidates:
                if j not in real_grey:
                    real_grey[j] = grey_image(real.items[j], modality, ssim_size)
                scores.append(pair_ssim(grey, real_grey[j]))
            best = int(candidates[int(np.argmax(scores))])
            nearest = int(candidates[0])
            reasons = []
            if max(scores) >= ssim_threshold:
                reasons.append(f"SSIM {max(scores):.3f} >= {ssim_threshold}")
            if cosine_threshold is not None and s[nearest] >= cosine_threshold:
                reasons.append(f"cosine {s[nearest]:.4f} >= {cosine_threshold}")
            rows.append({
                "synthetic": _item_name(item),
                "nearest_by_features": {"real": _item_name(real.items[nearest]), "cosine": float(s[nearest])},
                "nearest_by_ssim": {"real": _item_name(real.items[best]), "ssim": float(max(scores)),
                                    "cosine": float(s[best])},
                "flagged": bool(reasons),
                "reason": "; ".join(reasons),
                "_items": (item, real.items[nearest], real.items[best]),  # for the page; dropped from report.json
            })
    return rows


def _stored_size(item: Item) -> tuple[int, int] | None:
    """(H, W) of an image as stored; a header read for Pillow formats, None for an unreadable file."""
    from PIL import Image

    path, index = item
    if index is None and path.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm")):
        try:
            with Image.open(path) as im:
                return im.height, im.width
        except Exception:  # unreadable: extract_features skips and counts it
            return None
    try:
        return tuple(read_image(path, None, index).shape[1:])
    except ImageReadError:
        return None


def check_sizes(real_items: list[Item], synth_items: list[Item], synth_dir: str) -> list[tuple[int, int]]:
    """Every synthetic image must have a size that occurs among the real images (a generator writes the size it was
    trained at); the first one that does not raises SynthError naming it. Returns the real sizes found."""
    real_sizes = sorted({s for s in map(_stored_size, real_items) if s is not None})
    for item in synth_items:
        size = _stored_size(item)
        if size is not None and real_sizes and size not in real_sizes:
            shown = ", ".join(f"{h}x{w}" for h, w in real_sizes[:3]) + (" ..." if len(real_sizes) > 3 else "")
            raise SynthError(
                f"synthetic image {_item_name(item)} is {size[0]}x{size[1]} px, but the real images are {shown}: is "
                f"{synth_dir} the output of a generator trained on these images? Resize the real images to the "
                "generator's size, or pass allow_size_mismatch=True (--allow_size_mismatch) to compare anyway.")
    return real_sizes


def check_folder_modality(folder: str, items: list[Item], modality: str, what: str) -> None:
    """visionfm_core's modality check (colour vs grey) on a folder, as a SynthError naming it."""
    try:
        check_modality_of_images(sorted({p for p, _ in items}), modality)
    except ValueError as e:
        raise SynthError(f"{what} folder {folder}: {e}") from None


def synth_report(real_dir: str | os.PathLike, synth_dir: str | os.PathLike, modality: str,
                 encoder: str | os.PathLike | None = None, out: str | os.PathLike = "synth_report",
                 arch: str | None = None, patch_size: int | None = None, image_size: int = 224, k: int = 3,
                 ssim_threshold: float = SSIM_THRESHOLD, cosine_threshold: float | None = COSINE_THRESHOLD,
                 ssim_size: int = SSIM_SIZE, top: int = 16, batch_size: int = 32, device: str | None = None,
                 allow_size_mismatch: bool = False, allow_modality_mismatch: bool = False, seed: int = 0,
                 equal_n: bool = True, bootstrap: int = 200) -> dict:
    """Compare the synthetic images under `synth_dir` with the real (training) images under `real_dir` and write
    `out/report.json` and `out/index.html` (+ PNGs of the pairs), all or nothing. Returns the report.

    The distribution figures (Fréchet distance, k-NN precision and recall) depend on the number of images: by
    default (`equal_n`) they compare equal numbers (a seeded subset of the larger folder), carry 95 % bootstrap
    intervals (`bootstrap` rounds; 0: none) and the N they were computed on, and a warning when N is below the
    feature dimension. The memorisation check always looks at every synthetic image against every training image.

    Bad input (a folder of another modality, synthetic images of a size no real image has, an encoder of another
    modality, too few images) raises SynthError / WeightsError naming the folder or file before anything is
    written."""
    from visionfm_core.synth.pages import check_publishable, is_synth_report, write_report_folder

    m = get_modality(modality)
    check_publishable(out, is_synth_report)
    real_dir, synth_dir = os.fspath(real_dir), os.fspath(synth_dir)
    real_items, synth_items = list_items(real_dir), list_items(synth_dir)
    check_folder_modality(real_dir, real_items, m.name, "real")
    check_folder_modality(synth_dir, synth_items, m.name, "synthetic")
    if not allow_size_mismatch:
        check_sizes(real_items, synth_items, synth_dir)
    net, encoder_info = load_feature_encoder(encoder, m.name, arch, patch_size, image_size, seed,
                                             allow_modality_mismatch)
    real = extract_features(real_items, net, m.name, image_size, real_dir, batch_size, device)
    synth = extract_features(synth_items, net, m.name, image_size, synth_dir, batch_size, device)
    for fs, what in ((real, "real"), (synth, "synthetic")):
        if len(fs.items) < 2:
            raise SynthError(f"{what} folder {fs.folder}: {len(fs.items)} readable images; the report needs at least "
                             f"{max(2, k + 1)}")
    real_f, synth_f = equal_sizes(real.features, synth.features, seed) if equal_n else (real.features,
                                                                                        synth.features)
    precision, recall = knn_precision_recall(real_f, synth_f, k)
    warnings_ = []
    if min(len(real_f), len(synth_f)) < real_f.shape[1]:
        warnings_.append(f"N = {len(real_f)} real and {len(synth_f)} synthetic images are fewer than the "
                         f"{real_f.shape[1]} feature dimensions: the covariances are rank-deficient and the Fréchet "
                         "distance is biased upwards (two samples of one distribution give a large value); compare "
                         "reports only at equal N, and prefer more images")
        logger.warning("%s", warnings_[-1])
    intervals = bootstrap_intervals(real_f, synth_f, k, bootstrap, seed) if bootstrap > 0 else None
    # cosine similarities of a random encoder's features are not evidence of copying: never flag on them
    cosine_used = encoder_info["weights"] == "file" and cosine_threshold is not None
    pairs = memorisation(real, synth, m.name, ssim_threshold, cosine_threshold if cosine_used else None, ssim_size)
    flagged = [p for p in pairs if p["flagged"]]
    report = {
        "kind": REPORT_KIND,
        "modality": m.name,
        "real_dir": os.path.abspath(real_dir),
        "synth_dir": os.path.abspath(synth_dir),
        "counts": {"real": len(real.items), "synthetic": len(synth.items), "real_skipped": len(real.skipped),
                   "synthetic_skipped": len(synth.skipped)},
        "skipped": {"real": real.skipped, "synthetic": synth.skipped},
        "encoder": encoder_info,
        "n_compared": {"real": len(real_f), "synthetic": len(synth_f), "equal_n": equal_n},
        "frechet_distance": frechet_distance(real_f, synth_f),
        "precision": precision,
        "recall": recall,
        "k": k,
        "ci95": intervals,
        "bootstrap_rounds": bootstrap if intervals else 0,
        "warnings": warnings_,
        "thresholds": {"ssim": ssim_threshold, "cosine": cosine_threshold, "cosine_used": cosine_used,
                       "ssim_size": ssim_size, "ssim_candidates": SSIM_CANDIDATES,
                       "rule": f"flagged when the SSIM of a synthetic image with one of its {SSIM_CANDIDATES} "
                               f"feature-nearest training images >= {ssim_threshold}"
                               + (f", or the cosine similarity to its nearest training image >= {cosine_threshold}"
                                  if cosine_used else "")},
        "sizes_checked": not allow_size_mismatch,
        "flagged_count": len(flagged),
        "flagged": [_public(p) for p in flagged],
        "pairs": [_public(p) for p in pairs],
    }
    closest = sorted(pairs, key=lambda p: (-p["flagged"], -p["nearest_by_ssim"]["ssim"],
                                           -p["nearest_by_features"]["cosine"]))
    shown = [p for p in closest if p["flagged"]] + [p for p in closest if not p["flagged"]][:top]
    write_report_folder(out, report, shown, m.name)
    return report


def _public(pair: dict) -> dict:
    return {k: v for k, v in pair.items() if not k.startswith("_")}

