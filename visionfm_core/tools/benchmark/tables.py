"""The benchmark's tables: ``results.csv`` (one row per dataset, encoder, seed and metric, with its 95 % interval),
``comparisons.csv`` (every pair of encoders on the same test set: DeLong for AUROC, paired bootstrap for the rest),
``results.json`` (both, the configuration and the references) and ``results.md`` (the table for a paper, beside the
published values in ``references.json``, each with its source). Every file is written atomically."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np

from visionfm_core.engine.io import atomic_write_text
from visionfm_core.tasks.classification.metrics import METRIC_NAMES

__all__ = ["load_references", "compare_results", "write_tables"]

_LABELS = {"auroc": "AUROC", "aupr": "AUPR", "accuracy": "Accuracy", "kappa": "Kappa", "f1": "F1"}


def load_references() -> list[dict]:
    """The published reference values shipped with the package (``references.json``)."""
    text = resources.files("visionfm_core.tools.benchmark").joinpath("references.json").read_text(encoding="utf-8")
    return json.loads(text)["references"]


def _references_for(dataset: str, references: list[dict]) -> list[dict]:
    return [r for r in references if r["dataset"] in (dataset, "*")]


def compare_results(a: dict, b: dict, n_boot: int, level: float) -> list[dict]:
    """Paired comparison of two units on one test set: DeLong for AUROC, paired bootstrap (by patient where ids
    exist) for the other metrics. Refuses units scored on different images."""
    from visionfm_core.tools.benchmark.statistics import delong_test, paired_bootstrap

    ta, tb = a["test"], b["test"]
    if ta["images"] != tb["images"] or ta["labels"] != tb["labels"]:
        order_a, order_b = np.argsort(ta["images"]), np.argsort(tb["images"])
        if [ta["images"][i] for i in order_a] != [tb["images"][i] for i in order_b]:
            raise ValueError(f"{a['encoder']} and {b['encoder']} on {a['dataset']} were scored on different test "
                             "images; a paired comparison needs the same ones.")
    else:
        order_a = order_b = np.arange(len(ta["images"]))
    pa, pb = np.asarray(ta["probabilities"])[order_a], np.asarray(tb["probabilities"])[order_b]
    y = np.asarray(ta["labels"])[order_a]
    groups = np.asarray(ta["patients"])[order_a] if ta.get("patients") else None
    base = {"dataset": a["dataset"], "seed": a["seed"], "encoder_a": a["encoder"], "encoder_b": b["encoder"]}
    rows = []
    d = delong_test(pa, pb, y, level=level)
    rows.append({**base, "metric": "auroc", "a": d["auroc_a"], "b": d["auroc_b"], "difference": d["difference"],
                 "ci_low": d["low"], "ci_high": d["high"], "p": d["p"], "test": "DeLong"})
    others = tuple(m for m in METRIC_NAMES if m != "auroc")
    boot = paired_bootstrap(pa, pb, y, groups=groups, n_boot=n_boot, seed=a["seed"], level=level, metrics=others)
    by = "patient" if groups is not None else "image"
    for m in others:
        r = boot[m]
        rows.append({**base, "metric": m, "a": r["a"], "b": r["b"], "difference": r["difference"],
                     "ci_low": r["low"], "ci_high": r["high"], "p": r["p"], "test": f"paired bootstrap by {by}"})
    return rows


def _json_safe(x):
    # strict JSON for other tools: NaN (an undefined metric) becomes null
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(m: dict) -> str:
    return f"{_f(m['value'])} [{_f(m['low'])}, {_f(m['high'])}]"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _markdown(results: list[dict], comparisons: list[dict], record: dict, settings, copies, references) -> str:
    encoders = list(dict.fromkeys(r["encoder"] for r in results))
    titles = {c.name: c.spec.title for c in copies}
    level = int(round(settings.level * 100))
    by = {(r["dataset"], r["encoder"], r["seed"]): r for r in results}
    lines = [f"# VisionFM benchmark: {settings.protocol}", "",
             f"Test split of each dataset; {settings.arch}/{settings.patch_size} at {settings.image_size} px; "
             f"intervals: {level} % percentile bootstrap ({settings.bootstrap} resamples), by patient where the "
             "dataset has patient ids. AUROC and AUPR: macro one-vs-rest (the positive class for two classes). "
             f"Configuration: `benchmark.json`.", "",
             "## Test AUROC", ""]
    header = ["Dataset", "Seed", *[f"{e} AUROC [{level} % CI]" for e in encoders], "Published (model, source)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ds in dict.fromkeys(r["dataset"] for r in results):
        refs = _references_for(ds, references)
        ref_text = "; ".join(
            (f"{'~' if r.get('approximate') else ''}{r['value']:.3f}" if r["value"] is not None else r["status"])
            + f" ({r['model']}; {r['source_kind']})" for r in refs) or "not published"
        seeds = sorted({r["seed"] for r in results if r["dataset"] == ds})
        for s in seeds:
            cells = [_cell(by[(ds, e, s)]["metrics"]["auroc"]) if (ds, e, s) in by else "not run" for e in encoders]
            lines.append(f"| {titles.get(ds, ds)} | {s} | " + " | ".join(cells) + f" | {ref_text} |")
        if len(seeds) > 1:
            cells = []
            for e in encoders:
                v = [by[(ds, e, s)]["metrics"]["auroc"]["value"] for s in seeds if (ds, e, s) in by]
                cells.append(f"{_f(float(np.mean(v)))} ± {_f(float(np.std(v, ddof=1)))} (mean ± sd)" if v else "")
            lines.append(f"| {titles.get(ds, ds)} | all {len(seeds)} | " + " | ".join(cells) + " | |")
    lines += ["", "## Every metric", "",
              "| Dataset | Encoder | Seed | " + " | ".join(_LABELS[m] for m in METRIC_NAMES) + " | CI by | Test images "
              "| Time |", "|" + "---|" * (len(METRIC_NAMES) + 6)]
    for r in results:
        lines.append(f"| {titles.get(r['dataset'], r['dataset'])} | {r['encoder']} | {r['seed']} | "
                     + " | ".join(_cell(r["metrics"][m]) for m in METRIC_NAMES)
                     + f" | {r['ci_by']} ({r['n_units']}) | {r['n_test']} | {r['time_s']:.0f} s |")
    if comparisons:
        lines += ["", "## Paired comparisons (same test images)", "",
                  "Difference A - B with its interval and two-sided p: DeLong's test for AUROC, paired bootstrap for "
                  "the other metrics.", "",
                  "| Dataset | Seed | A | B | Metric | A | B | A - B [CI] | p | Test |", "|" + "---|" * 10]
        for c in comparisons:
            lines.append(f"| {titles.get(c['dataset'], c['dataset'])} | {c['seed']} | {c['encoder_a']} | "
                         f"{c['encoder_b']} | {_LABELS[c['metric']]} | {_f(c['a'])} | {_f(c['b'])} | "
                         f"{_f(c['difference'])} [{_f(c['ci_low'])}, {_f(c['ci_high'])}] | {_p(c['p'])} | "
                         f"{c['test']} |")
    lines += ["", "## References", ""]
    run = set(titles)
    for r in (r for r in references if r["dataset"] == "*" or r["dataset"] in run):
        value = (f"{'~' if r.get('approximate') else ''}{r['value']:.3f}" if r["value"] is not None
                 else r["status"])
        lines.append(f"- {r['dataset'] if r['dataset'] != '*' else 'all datasets'}, {r['model']}, "
                     f"{r['metric'].upper()}: {value}. Source ({r['source_kind']}): {r['source']}.")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, results: list[dict], record: dict, settings, copies) -> dict[str, str]:
    """Write results.csv, comparisons.csv, results.json and results.md under `out`; returns their paths."""
    references = load_references()
    comparisons = []
    for ds in dict.fromkeys(r["dataset"] for r in results):
        for s in sorted({r["seed"] for r in results if r["dataset"] == ds}):
            group = [r for r in results if r["dataset"] == ds and r["seed"] == s]
            for a, b in itertools.combinations(group, 2):
                comparisons += compare_results(a, b, settings.bootstrap, settings.level)
    rows = [[r["dataset"], r["encoder"], r["seed"], r["protocol"], m, r["metrics"][m]["value"],
             r["metrics"][m]["low"], r["metrics"][m]["high"], r["ci_by"], r["n_test"], r["n_units"],
             round(r["time_s"], 3)] for r in results for m in METRIC_NAMES]
    paths = {"csv": out / "results.csv", "comparisons_csv": out / "comparisons.csv", "json": out / "results.json",
             "markdown": out / "results.md"}
    atomic_write_text(paths["csv"], _csv(["dataset", "encoder", "seed", "protocol", "metric", "value", "ci_low",
                                          "ci_high", "ci_by", "n_test", "n_units", "time_s"], rows))
    keys = ["dataset", "seed", "encoder_a", "encoder_b", "metric", "a", "b", "difference", "ci_low", "ci_high", "p",
            "test"]
    atomic_write_text(paths["comparisons_csv"], _csv(keys, [[c[k] for k in keys] for c in comparisons]))
    summary = [{k: v for k, v in r.items() if k != "test"} for r in results]
    atomic_write_text(paths["json"], json.dumps(_json_safe({"configuration": record, "results": summary,
                                                            "comparisons": comparisons, "references": references}),
                                                indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], _markdown(results, comparisons, record, settings, copies, references))
    return {k: str(v) for k, v in paths.items()}
