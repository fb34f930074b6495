"""A blinded visual Turing test: can readers tell real images from synthetic ones? (the test the VisionFM paper ran
with ophthalmologists on its generated images)

`turing_page(real_dir, synth_dir, out)` writes `out/page/` (index.html + images/NNN.png) for the readers and
`out/key.json` outside it: share the `page` folder only. The images are re-encoded as PNG under neutral names and
shown at one size (a centred square, `size` px), so neither file name, format, metadata nor resolution tells the
source; the order is a seeded shuffle. Readers answer in the browser and press "Save answers", which downloads a
JSON file (a Blob link: no server, nothing leaves the computer). `score_turing(answers, key)` reports readers'
accuracy with a Clopper-Pearson 95 % interval, and sensitivity / specificity for "synthetic".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random

from scipy.stats import binomtest

from visionfm_core.data.io.readers import ImageReadError
from visionfm_core.engine.io import atomic_write_bytes, atomic_write_text
from visionfm_core.synth.pages import PAGE_STYLE, display_png, publish_folder
from visionfm_core.synth.quality import SynthError, check_folder_modality, list_items

__all__ = ["KEY_KIND", "ANSWERS_KIND", "turing_page", "score_turing", "format_score", "equivalence_to_chance"]

KEY_KIND = "visionfm_turing_key"
ANSWERS_KIND = "visionfm_turing_answers"
LABELS = ("real", "synthetic")
logger = logging.getLogger(__name__)


def turing_page(real_dir: str | os.PathLike, synth_dir: str | os.PathLike, out: str | os.PathLike = "turing_test",
                n: int = 50, seed: int = 0, modality: str | None = None, size: int = 384) -> dict:
    """Pick `n` real and `n` synthetic images (seeded; fewer of both when a folder has fewer, so the test stays
    balanced and chance is 50 %), write the blinded page and the key. Returns the key.

    `modality` (optional): check that both folders look like it, and apply its channel rules when reading.
    An existing `out` is never replaced: a new key must not silently replace the one readers answered against."""
    real_dir, synth_dir, out = os.fspath(real_dir), os.fspath(synth_dir), os.path.abspath(os.fspath(out))
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists: choose a new folder for a new test (an existing key is never replaced)")
    real, synth = list_items(real_dir), list_items(synth_dir)
    if modality is not None:
        check_folder_modality(real_dir, real, modality, "real")
        check_folder_modality(synth_dir, synth, modality, "synthetic")
    if int(n) < 1:
        raise SynthError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    picked = {"real": _pick(real, int(n), rng, modality, size), "synthetic": _pick(synth, int(n), rng, modality, size)}
    per_kind = min(len(v) for v in picked.values())
    if per_kind < 1:
        empty = real_dir if not picked["real"] else synth_dir
        raise SynthError(f"no readable image in {empty}")
    chosen = [(truth, item, png) for truth, found in picked.items() for item, png in found[:per_kind]]
    rng.shuffle(chosen)
    ids = [f"{i + 1:03d}" for i in range(len(chosen))]
    items = {i: {"truth": truth, "file": path, "slice": index} for i, (truth, (path, index), _) in zip(ids, chosen)}
    # the page carries this id and the scorer checks it, so answers are never scored against another test's key
    page_id = hashlib.sha256(json.dumps([seed, items], sort_keys=True).encode()).hexdigest()[:16]
    key = {"kind": KEY_KIND, "page_id": page_id, "seed": seed, "n_per_kind": per_kind, "real_dir":
           os.path.abspath(real_dir), "synth_dir": os.path.abspath(synth_dir), "modality": modality, "items": items}

    def build(folder: str) -> None:
        for i, (_, _, png) in zip(ids, chosen):
            atomic_write_bytes(os.path.join(folder, "page", "images", f"{i}.png"), png)
        atomic_write_text(os.path.join(folder, "page", "index.html"), _page_html(ids, page_id, size))
        atomic_write_text(os.path.join(folder, "key.json"), json.dumps(key, indent=1) + "\n")

    publish_folder(out, build, lambda _: False)
    return key


def _pick(items: list, count: int, rng: random.Random, modality: str | None, size: int) -> list[tuple]:
    """Up to `count` readable items in a seeded random order, with their page PNGs; unreadable files are passed
    over with a warning."""
    order = rng.sample(items, len(items))
    found = []
    for item in order:
        if len(found) == count:
            break
        try:
            found.append((item, display_png(item, modality, size, square=True)))
        except ImageReadError as e:
            logger.warning("skipping unreadable image: %s", e)
    return found


def _page_html(ids: list[str], page_id: str, size: int) -> str:
    cards = "\n".join(
        f'<div class="card"><img src="images/{i}.png" width="{size}" height="{size}" alt="image {i}">'
        f'<div>{i}: <label><input type="radio" name="q{i}" value="real"> real</label> '
        f'<label><input type="radio" name="q{i}" value="synthetic"> synthetic</label></div></div>'
        for i in ids)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Visual Turing test</title>
<style>{PAGE_STYLE}
.grid{{display:flex;flex-wrap:wrap;gap:16px}}.card{{border:1px solid #ccc;padding:8px}}
.card img{{max-width:{size}px}}button{{font-size:110%;padding:6px 16px}}</style></head><body>
<h1>Visual Turing test</h1>
<p>Half of these {len(ids)} images are real, half were generated by a computer. For each image, choose
<i>real</i> or <i>synthetic</i>. When done, press <b>Save answers</b>: your browser saves a small file
(answers_&lt;your name&gt;.json) to your downloads; send it to the person running the test. Nothing is sent
anywhere by this page. Your choices are also kept in this browser while you work, so you can close the page and
come back.</p>
<p><label>Your name or reader code: <input id="reader" size="24"></label></p>
<div class="grid">
{cards}
</div>
<p><button id="save">Save answers</button> <span id="status"></span></p>
<script>
const PAGE_ID = "{page_id}", IDS = {json.dumps(ids)}, STORE = "visionfm_turing_" + PAGE_ID;
function collect() {{
  const answers = {{}};
  for (const id of IDS) {{
    const c = document.querySelector('input[name="q' + id + '"]:checked');
    if (c) answers[id] = c.value;
  }}
  return answers;
}}
function remember() {{
  try {{ localStorage.setItem(STORE, JSON.stringify({{reader: document.getElementById("reader").value,
                                                      answers: collect()}})); }} catch (e) {{}}
}}
try {{
  const kept = JSON.parse(localStorage.getItem(STORE) || "null");
  if (kept) {{
    document.getElementById("reader").value = kept.reader || "";
    for (const [id, v] of Object.entries(kept.answers || {{}})) {{
      const c = document.querySelector('input[name="q' + id + '"][value="' + v + '"]');
      if (c) c.checked = true;
    }}
  }}
}} catch (e) {{}}
document.addEventListener("change", remember);
document.addEventListener("input", remember);  // a name typed just before closing the page
document.getElementById("save").addEventListener("click", function () {{
  const answers = collect(), reader = document.getElementById("reader").value.trim();
  const missing = IDS.length - Object.keys(answers).length;
  if (!reader && !confirm("No name or reader code given. Save anyway?")) return;
  if (missing && !confirm(missing + " images have no answer. Save anyway?")) return;
  const data = {{kind: "{ANSWERS_KIND}", page_id: PAGE_ID, reader: reader, saved: new Date().toISOString(),
                answers: answers}};
  const blob = new Blob([JSON.stringify(data, null, 1)], {{type: "application/json"}});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "answers_" + (reader || "reader").replace(/[^A-Za-z0-9_-]/g, "_") + ".json";
  document.body.appendChild(a);
  a.click();
  setTimeout(function () {{ URL.revokeObjectURL(a.href); a.remove(); }}, 1000);
  document.getElementById("status").textContent = "saved " + Object.keys(answers).length + " answers";
}});
</script>
</body></html>
"""


def _read_json(path: str | os.PathLike, kind: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise SynthError(f"cannot read {what} {path}: {e.strerror}") from None
    except ValueError as e:
        raise SynthError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise SynthError(f"{path} is not a {what} (expected a JSON object with \"kind\": \"{kind}\")")
    return data


def _proportion(k: int, n: int) -> dict:
    """k of n with its Clopper-Pearson ("exact") 95 % interval; value None when n is 0."""
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci95": None}
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"k": k, "n": n, "value": k / n, "ci95": [float(ci.low), float(ci.high)]}


def equivalence_to_chance(k: int, n: int, margin: float) -> dict:
    """Exact two one-sided tests (TOST) that the readers' accuracy lies within 50 % +/- `margin`: the p-value is the
    larger of the two one-sided binomial tests; "equivalent" at the 5 % level when it is below 0.05 (the same as the
    90 % Clopper-Pearson interval lying inside the margin). An interval that merely contains 50 % shows no
    difference from guessing, not that readers cannot tell the images apart: only this test, with its margin stated,
    supports that verdict."""
    if not 0 < margin < 0.5:
        raise SynthError(f"the equivalence margin must be in (0, 0.5), got {margin}")
    if n == 0:
        return {"margin": margin, "p_value": None, "equivalent": None}
    above_low = binomtest(k, n, 0.5 - margin, alternative="greater").pvalue
    below_high = binomtest(k, n, 0.5 + margin, alternative="less").pvalue
    p_value = float(max(above_low, below_high))
    return {"margin": margin, "p_value": p_value, "equivalent": p_value < 0.05}


def _score(answers: dict[str, str], truth: dict[str, str], margin: float = 0.1) -> dict:
    pairs = [(truth[i], a) for i, a in answers.items()]
    correct = sum(t == a for t, a in pairs)
    tp = sum(t == a == "synthetic" for t, a in pairs)
    tn = sum(t == a == "real" for t, a in pairs)
    n_synth = sum(t == "synthetic" for t, _ in pairs)
    accuracy = _proportion(correct, len(pairs))
    # two-sided exact test against guessing (50 %: the page shows as many real images as synthetic ones)
    p_value = float(binomtest(correct, len(pairs), 0.5).pvalue) if pairs else None
    return {"answered": len(pairs), "unanswered": len(truth) - len(pairs), "accuracy": accuracy,
            "p_value_vs_chance": p_value, "equivalence": equivalence_to_chance(correct, len(pairs), margin),
            "sensitivity_synthetic": _proportion(tp, n_synth),
            "specificity_synthetic": _proportion(tn, len(pairs) - n_synth)}


def score_turing(answers: str | os.PathLike | list, key: str | os.PathLike, margin: float = 0.1) -> dict:
    """Score one or several readers' answer files against the key: per reader and pooled, accuracy with its
    Clopper-Pearson 95 % interval, the exact binomial p-value against guessing and the equivalence test against
    50 % +/- `margin` (:func:`equivalence_to_chance`), sensitivity (synthetic images called synthetic) and
    specificity (real images called real), with intervals. Pooling treats every answer as independent, which
    readers' answers to the same images are not quite: read the per-reader lines too."""
    if not 0 < margin < 0.5:
        raise SynthError(f"the equivalence margin must be in (0, 0.5), got {margin}")
    key_data = _read_json(key, KEY_KIND, "Turing test key")
    truth = {i: v["truth"] for i, v in key_data["items"].items()}
    files = [answers] if isinstance(answers, (str, os.PathLike)) else list(answers)
    readers, pooled = [], {}
    for path in files:
        data = _read_json(path, ANSWERS_KIND, "Turing test answers file")
        if data.get("page_id") != key_data["page_id"]:
            raise SynthError(f"{path} answers the test page {data.get('page_id')!r}, but {key} is the key of page "
                             f"{key_data['page_id']!r}: use the key written with that page")
        given = data.get("answers")
        if not isinstance(given, dict):
            raise SynthError(f"{path} has no \"answers\" object")
        unknown = [i for i in given if i not in truth]
        bad = [f"{i}: {v!r}" for i, v in given.items() if v not in LABELS]
        if unknown or bad:
            raise SynthError(f"{path}: " + "; ".join(
                ([f"images not in the test: {', '.join(unknown[:5])}"] if unknown else [])
                + ([f"answers other than 'real'/'synthetic': {', '.join(bad[:5])}"] if bad else [])))
        reader = str(data.get("reader") or os.path.basename(os.fspath(path)))
        readers.append({"reader": reader, "file": os.fspath(path), **_score(given, truth, margin)})
        pooled.update({(reader, len(readers), i): a for i, a in given.items()})
    pooled_score = _score({str(n): a for n, a in enumerate(pooled.values())},
                          {str(n): truth[i] for n, (_, _, i) in enumerate(pooled)}, margin)
    pooled_score["unanswered"] = sum(r["unanswered"] for r in readers)
    return {"page_id": key_data["page_id"], "images": len(truth), "readers": readers, "pooled": pooled_score}


def format_score(result: dict) -> str:
    """Readable lines of `score_turing`'s result."""

    def line(name: str, s: dict) -> str:
        def p(x):
            return "n/a" if x["value"] is None else f"{x['value']:.1%} [{x['ci95'][0]:.1%}, {x['ci95'][1]:.1%}]"

        pv = "n/a" if s["p_value_vs_chance"] is None else f"{s['p_value_vs_chance']:.3g}"
        eq = s["equivalence"]
        verdict = "n/a" if eq["p_value"] is None else (
            f"{'equivalent' if eq['equivalent'] else 'not shown equivalent'} to guessing within "
            f"+/-{eq['margin']:.0%} (TOST p {eq['p_value']:.3g})")
        return (f"{name}: accuracy {p(s['accuracy'])} ({s['accuracy']['k']}/{s['accuracy']['n']}, p vs chance "
                f"{pv}; {verdict}); sensitivity for "
                f"synthetic {p(s['sensitivity_synthetic'])}; specificity {p(s['specificity_synthetic'])}; "
                f"{s['unanswered']} unanswered")

    lines = [line(r["reader"], r) for r in result["readers"]]
    if len(result["readers"]) > 1:
        lines.append(line("all readers", result["pooled"]))
    lines.append("(95 % Clopper-Pearson intervals. An accuracy interval that contains 50 % shows no difference from "
                 "guessing, not that readers cannot tell the images apart; that verdict needs the equivalence test, "
                 "at its stated margin.)")
    return "\n".join(lines)
