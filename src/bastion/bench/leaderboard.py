"""The leaderboard of a bench: one row per defense, as JSON, CSV and Markdown.

Rows are the flat dicts of ``bench.harness.build_row``: accuracies as fractions in [0, 1],
radii and perturbations in [0, 1] pixel units, times in seconds. ``leaderboard.json`` keeps
every field (seeds, package versions, config / weights / protocol hashes, the
robust-accuracy curve, RobustBench's model-card fields); ``leaderboard.csv`` holds every
scalar field; ``leaderboard.md`` the columns of ``leaderboard_columns`` (the ones people
compare), accuracies in percent. ``robustbench.json`` lists the empirical rows in
RobustBench's model-card fields (clean and AutoAttack accuracy, threat model, epsilon).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bastion.records.io import atomic_write_bytes, atomic_write_json

_FIRST = ("name", "method", "clean_acc")
_LAST = ("train_seconds", "eval_seconds", "minimal_seconds", "certify_seconds",
         "smoothed_attack_seconds", "flags")


def _header(key: str) -> str:
    parts = key.split("/")
    head = parts[0]
    if head == "robust_acc":
        norm, eps, attack = parts[1:]
        return f"{attack} {norm} {eps}" if attack != "worst" else f"worst case {norm} {eps}"
    if head == "asr":
        return f"ASR {parts[1]} {parts[2]}"
    if head == "avg_perturbation":
        return f"avg pert. eq.3 ({parts[1]})"
    if head == "avg_perturbation_successes":
        return f"avg pert. of successes ({parts[1]})"
    if head == "certified_acc":
        return f"certified {parts[1]} r={parts[2]}"
    if head == "certified_topk_acc":
        return f"certified top-k {parts[1]} r={parts[2]}"
    if head == "smoothed_robust_acc":
        return f"SmoothAdv on g {parts[1]} r={parts[2]}"
    return {"name": "defense", "method": "method", "clean_acc": "clean", "acr": "ACR",
            "train_seconds": "train s", "eval_seconds": "attacks s",
            "minimal_seconds": "minimal s", "certify_seconds": "certify s",
            "smoothed_attack_seconds": "SmoothAdv s",
            "flags": "checks"}.get(key, key)


def leaderboard_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(key, header)`` of the compared columns, in a stable order, for the present rows."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)

    def group(prefix: str) -> list[str]:
        return [k for k in keys if k.startswith(prefix)]

    robust = group("robust_acc/")
    ordered = [k for k in _FIRST if k in keys]
    ordered += [k for k in robust if not k.endswith("/worst")]
    ordered += [k for k in robust if k.endswith("/worst")]
    ordered += group("asr/") + group("avg_perturbation/")
    ordered += [k for k in ("certificate",) if k in keys]
    ordered += group("certified_acc/") + [k for k in ("acr",) if k in keys]
    ordered += group("certified_topk_acc/")
    ordered += group("smoothed_robust_acc/")
    ordered += [k for k in _LAST if k in keys]
    return [(k, _header(k)) for k in ordered]


def format_value(key: str, value: Any) -> str:
    """A cell: accuracies in percent (1 decimal), perturbations and ACR with 3-4 digits,
    seconds as integers, check flags joined; missing values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "flags":
        return ", ".join(value) if value else "none"
    if key.endswith("_seconds"):
        return f"{float(value):.0f}"
    if key.startswith(("robust_acc/", "asr/", "certified_acc/", "smoothed_robust_acc/",
                       "certified_topk_acc/")) or (
            key == "clean_acc"):
        return f"{100 * float(value):.1f}"
    if key.startswith("avg_perturbation") or key == "acr":
        return f"{float(value):.4f}" if key != "acr" else f"{float(value):.3f}"
    return str(value)


def to_markdown(rows: Sequence[Mapping[str, Any]],
                columns: Sequence[tuple[str, str]] | None = None) -> str:
    """A Markdown table of ``rows`` (accuracies in %)."""
    columns = list(columns or leaderboard_columns(rows))
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format_value(k, r.get(k)).replace("|", "/") for k, _ in columns)
            + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every scalar field of every row (flags joined by ``;``), raw fractions."""
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if (_scalar(v) or k == "flags") and k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys)
    for r in rows:
        w.writerow([";".join(r[k]) if k == "flags" and isinstance(r.get(k), list)
                    else ("" if r.get(k) is None else r.get(k)) for k in keys])
    return buf.getvalue()


def write_leaderboard(out: str | Path, rows: Sequence[Mapping[str, Any]],
                      suite: Any = None) -> dict[str, Path]:
    """Write ``leaderboard.{json,csv,md}`` and ``robustbench.json`` into ``out``; return
    their paths. ``suite`` (a ``bench.suite.Suite``) adds its name and protocol to the
    JSON."""
    out = Path(out)
    doc: dict[str, Any] = {"rows": list(rows)}
    if suite is not None:
        from bastion.bench.suite import protocol_dict

        doc = {"suite": suite.name, "description": suite.description,
               "protocol": protocol_dict(suite.protocol), **doc}
    paths = {"json": out / "leaderboard.json", "csv": out / "leaderboard.csv",
             "md": out / "leaderboard.md", "robustbench": out / "robustbench.json"}
    atomic_write_json(paths["json"], doc)
    atomic_write_bytes(paths["csv"], to_csv(rows).encode())
    atomic_write_bytes(paths["md"], to_markdown(rows).encode())
    cards = [r["robustbench"] for r in rows if r.get("robustbench")]
    atomic_write_json(paths["robustbench"], cards)
    return paths


__all__ = ["format_value", "leaderboard_columns", "to_csv", "to_markdown",
           "write_leaderboard"]
