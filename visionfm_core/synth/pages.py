"""Static HTML pages of the synthetic-image checks: relative PNG links, no server, the folder opens from disk.

Folders are built in a temporary sibling and renamed into place, so a crash leaves the previous report (or
nothing), never half a page.
"""

from __future__ import annotations

import html
import io
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from PIL import Image

from visionfm_core.data.io.readers import read_image
from visionfm_core.data.resize import resize
from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text

__all__ = ["display_png", "check_publishable", "publish_folder", "is_synth_report", "write_report_folder",
           "PAGE_STYLE"]

PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:8px 12px}
.flag{background:#fde8e8}img{image-rendering:auto;max-width:256px;display:block}code{font-size:90%}"""


def display_png(item: tuple[str, int | None], modality: str | None = None, size: int = 256,
                square: bool = False) -> bytes:
    """PNG bytes of an image file (any format the readers take: DICOM, NIfTI slices, ...) for a web page: the long
    side `size` px, or, with `square`, the centred square resized to size x size."""
    rgb = read_image(item[0], modality, item[1])
    h, w = rgb.shape[1:]
    if square:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        rgb, out = rgb[:, top:top + side, left:left + side], (size, size)
    else:
        scale = size / max(h, w)
        out = (max(1, round(h * scale)), max(1, round(w * scale)))
    pixels = (np.moveaxis(resize(rgb, out), 0, -1) * 255).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def check_publishable(out: str | os.PathLike, replaceable: Callable[[str], bool]) -> str:
    """The absolute `out` if `publish_folder` may write it (absent, empty, or `replaceable`); FileExistsError if not.
    Commands call it before their long work, so a wrong --out fails at once."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not (os.path.isdir(out) and (not os.listdir(out) or replaceable(out))):
        raise FileExistsError(f"{out} exists and is not an earlier output of this command: choose another --out")
    return out


def publish_folder(out: str | os.PathLike, build: Callable[[str], None], replaceable: Callable[[str], bool]) -> str:
    """Run `build(tmp)` on a fresh temporary folder next to `out`, then rename it to `out`.

    An existing `out` is replaced only when it is empty or `replaceable(out)` says it is an earlier output of the
    same kind; anything else is refused, so a user's folder is never deleted."""
    out = check_publishable(out, replaceable)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    old = None
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        if os.path.exists(out):  # a folder cannot be renamed over a non-empty one: move the old aside first
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=".old")
            os.replace(out, os.path.join(old, "previous"))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out):
            os.replace(os.path.join(old, "previous"), out)  # put the earlier output back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def is_synth_report(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "report.json")) as f:
            from visionfm_core.synth.quality import REPORT_KIND

            return json.load(f).get("kind") == REPORT_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _figure(src: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(src)}" alt=""><figcaption>{caption}</figcaption></figure>'


def _pair_rows(pairs: list[dict], folder: str, modality: str) -> str:
    rows = []
    for i, pair in enumerate(pairs):
        synth, nearest, best = pair["_items"]
        names = {"synthetic": synth, "nearest": nearest}
        if best != nearest:
            names["ssim_best"] = best
        cells = []
        for role, item in names.items():
            rel = f"pairs/{i:04d}_{role}.png"
            atomic_write_bytes(os.path.join(folder, rel), display_png(item, modality))
            name = html.escape(os.path.basename(item[0]) + ("" if item[1] is None else f" [slice {item[1]}]"))
            if role == "synthetic":
                caption = f"synthetic: {name}"
            elif role == "nearest":
                caption = (f"nearest training image by features: {name}<br>cosine "
                           f"{pair['nearest_by_features']['cosine']:.4f}")
                if best == nearest:
                    caption += f", SSIM {pair['nearest_by_ssim']['ssim']:.3f}"
            else:
                caption = (f"most similar in pixels among the feature-nearest: {name}<br>SSIM "
                           f"{pair['nearest_by_ssim']['ssim']:.3f}, cosine {pair['nearest_by_ssim']['cosine']:.4f}")
            cells.append(f"<td>{_figure(rel, caption)}</td>")
        flag = f"<b>near-copy</b>: {html.escape(pair['reason'])}" if pair["flagged"] else "not flagged"
        rows.append(f'<tr class="{"flag" if pair["flagged"] else ""}"><td>{i + 1}<br>{flag}</td>{"".join(cells)}</tr>')
    return "<table>" + "".join(rows) + "</table>"


def write_report_folder(out: str | os.PathLike, report: dict, shown: list[dict], modality: str) -> str:
    """`out/report.json`, `out/index.html` and `out/pairs/*.png` of `synth_report`, all or nothing."""

    def build(folder: str) -> None:
        enc = report["encoder"]
        if enc["weights"] == "file":
            encoder_line = (f"{enc['arch']}/{enc['patch_size']} at {enc['image_size']} px, weights "
                            f"<code>{html.escape(enc['path'])}</code> (sha256 <code>{enc['sha256']}</code>)")
            warning = ""
        else:
            encoder_line = f"{enc['arch']}/{enc['patch_size']} at {enc['image_size']} px, <b>random init</b>"
            warning = f'<p class="warn">{html.escape(enc["note"])} Near-copies are flagged on pixel SSIM only.</p>'
        c, t = report["counts"], report["thresholds"]
        n = report["n_compared"]
        nc = f"{n['real']} real vs {n['synthetic']} synthetic" + (" (equal numbers)" if n["equal_n"] else "")

        def ci(name: str, fmt: str) -> str:  # the 95 % bootstrap interval, when one was computed
            if not report.get("ci95"):
                return ""
            low, high = report["ci95"][name]
            return f" (95 % CI {low:{fmt}} to {high:{fmt}}, {report['bootstrap_rounds']} bootstrap rounds)"

        warning += "".join(f'<p class="warn">{html.escape(w)}</p>' for w in report.get("warnings", []))
        flagged = report["flagged_count"]
        pairs_html = _pair_rows(shown, folder, modality)
        summary = (f"<b>{flagged} of {c['synthetic']} synthetic images flagged as near-copies</b> of a training "
                   "image." if flagged else f"No synthetic image of {c['synthetic']} is flagged as a near-copy.")
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Synthetic images: quality and privacy</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>Synthetic {html.escape(report['modality'])} images: quality and privacy</h1>
{warning}<table>
<tr><th>real (training) images</th><td><code>{html.escape(report['real_dir'])}</code>: {c['real']} read,
{c['real_skipped']} unreadable skipped</td></tr>
<tr><th>synthetic images</th><td><code>{html.escape(report['synth_dir'])}</code>: {c['synthetic']} read,
{c['synthetic_skipped']} unreadable skipped</td></tr>
<tr><th>feature encoder</th><td>{encoder_line}</td></tr>
<tr><th>Fréchet distance</th><td>{report['frechet_distance']:.4g}{ci('frechet_distance', '.4g')}, N = {nc} (0: the
two feature distributions have the same mean and covariance; comparable only between reports made with the same
encoder and the same N)</td></tr>
<tr><th>precision (k={report['k']})</th><td>{report['precision']:.3f}{ci('precision', '.3f')}, N = {nc}: share of
synthetic images inside the real images' k-NN feature manifold (fidelity)</td></tr>
<tr><th>recall (k={report['k']})</th><td>{report['recall']:.3f}{ci('recall', '.3f')}, N = {nc}: share of real
images inside the synthetic images' manifold (diversity)</td></tr>
</table>
<h2>Memorisation</h2><p>{summary} Rule: {html.escape(t['rule'])}; SSIM on grey images resized to
{t['ssim_size']} px.</p>
<p>Shown: every flagged pair, then the {len(shown) - flagged} closest of the others (highest SSIM first).
The full list is in <a href="report.json">report.json</a>.</p>
{pairs_html}
</body></html>
"""
        atomic_write_text(os.path.join(folder, "index.html"), page)
        atomic_write_text(os.path.join(folder, "report.json"), json.dumps(report, indent=1) + "\n")

    return publish_folder(out, build, is_synth_report)
