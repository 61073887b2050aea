"""Geometry of SAE dictionaries, as in Braun et al. (2024), section on feature geometry.

    within  = nearest_features(d_e2e)               # each feature's most similar *other* feature, same SAE
    cross   = nearest_features(d_e2e, d_local)      # each e2e feature's best match among local features
    report  = geometry_report({"local s1": (d, "local", 1), "e2e s1": (d2, "e2e", 1), ...})

All similarities are cosines between unit-norm dictionary elements (decoder columns). The report has three
families of distributions of "max cosine similarity": within each SAE, across SAE types (one SAE per type,
the lowest seed, each direction; and against the other type's second seed, since SAEs trained with one seed
start from one initialisation), and across seeds of one type. `plot_geometry` draws them with matplotlib.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

SUMMARY_THRESHOLDS = (0.5, 0.7, 0.9)


@torch.no_grad()
def nearest_features(a: torch.Tensor, b: Optional[torch.Tensor] = None, chunk: int = 4096) -> tuple:
    """For each row of `a` `(n, d)`, the most cosine-similar row of `b` `(m, d)` (of `a` itself, excluding the
    row, when `b` is None). Returns `(cosine (n,), index (n,))`; computed in chunks of rows (no n x m matrix)."""
    a = F.normalize(a.detach().float(), dim=-1)
    same = b is None
    b = a if same else F.normalize(b.detach().float(), dim=-1)
    values, index = [], []
    for start in range(0, a.shape[0], chunk):
        sims = a[start:start + chunk] @ b.T
        if same:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = float("-inf")
        best = sims.max(dim=1)
        values.append(best.values)
        index.append(best.indices)
    return torch.cat(values), torch.cat(index)


def summarise(values: torch.Tensor) -> dict:
    """Mean, median and the fraction above each of `SUMMARY_THRESHOLDS`."""
    values = values.double()
    out = {"n": int(values.numel()), "mean": round(values.mean().item(), 4), "median": round(values.median().item(), 4)}
    for t in SUMMARY_THRESHOLDS:
        out[f"frac>{t}"] = round((values > t).double().mean().item(), 4)
    return out


def geometry_report(dictionaries: Mapping) -> dict:
    """The paper's three comparisons for a set of SAEs at one site.

    Args:
        dictionaries: `{name: (directions (dict_size, d_in), type, seed)}`; type is e.g. "local", "e2e", "e2e+ds".
    Returns:
        `{"within": {name: values}, "cross_type": {"A -> B": values}, "cross_seed": {type: values}}` where each
        `values` is a tensor of max cosine similarities (one per feature of the first SAE named).
    """
    by_type: dict = {}
    for name, (_, kind, seed) in sorted(dictionaries.items(), key=lambda item: (item[1][1], item[1][2])):
        by_type.setdefault(kind, []).append(name)
    report: dict = {"within": {}, "cross_type": {}, "cross_seed": {}}
    for name, (directions, _, _) in dictionaries.items():
        report["within"][name] = nearest_features(directions)[0]
    for kind_a, names_a in by_type.items():
        for kind_b, names_b in by_type.items():
            if kind_a == kind_b:
                continue
            a, b = dictionaries[names_a[0]][0], dictionaries[names_b[0]][0]
            report["cross_type"][f"{kind_a} -> {kind_b}"] = nearest_features(a, b)[0]
            if len(names_b) >= 2:  # SAEs of one seed share their initialisation: also compare across seeds
                other = dictionaries[names_b[1]][0]
                report["cross_type"][f"{kind_a} -> {kind_b} (other seed)"] = nearest_features(a, other)[0]
    for kind, names in by_type.items():
        if len(names) >= 2:
            report["cross_seed"][kind] = nearest_features(dictionaries[names[0]][0], dictionaries[names[1]][0])[0]
    return report


def report_table(report: dict) -> str:
    """A markdown table of the summaries of every distribution in `report`."""
    header = ["comparison", "n", "mean", "median", *[f"frac>{t}" for t in SUMMARY_THRESHOLDS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family, entries in report.items():
        for name, values in entries.items():
            s = summarise(values)
            lines.append("| " + " | ".join([f"{family}: {name}", str(s["n"]), *[f"{s[k]:.3f}" for k in header[2:]]]) + " |")
    return "\n".join(lines) + "\n"


def plot_geometry(report: dict, out_dir) -> list:
    """One PNG per family (`within.png`, `cross_type.png`, `cross_seed.png`): histograms of max cosine similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"within": "Within SAE: max cosine similarity to another feature",
              "cross_type": "Across SAE types: best match in the other SAE",
              "cross_seed": "Across seeds: best match in the other seed's SAE"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    bins = torch.linspace(-0.2, 1.0, 61).tolist()
    for family, entries in report.items():
        if not entries:
            continue
        # Comparisons against another seed go in a panel of their own (same-seed SAEs share their init).
        panels = [{n: v for n, v in entries.items() if not n.endswith("(other seed)")},
                  {n: v for n, v in entries.items() if n.endswith("(other seed)")}]
        panels = [p for p in panels if p]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 3.6), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for name, values in panel.items():
                ax.hist(values.numpy(), bins=bins, histtype="step", density=True, linewidth=1.5, label=name)
            ax.set_xlabel("max cosine similarity")
            ax.set_ylabel("density")
            ax.legend(fontsize=8)
        fig.suptitle(titles[family], fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{family}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(report: dict, out_dir) -> None:
    """`geometry.md` (table) and `geometry.json` (summaries) under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "geometry.md").write_text(report_table(report))
    summary = {family: {name: summarise(v) for name, v in entries.items()} for family, entries in report.items()}
    (out_dir / "geometry.json").write_text(json.dumps(summary, indent=2) + "\n")
