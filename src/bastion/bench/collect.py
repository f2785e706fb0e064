"""Gather what a report shows from a bench folder or from a single run folder.

A **bench folder** (written by ``bastion bench``) holds ``leaderboard.json`` and one folder
per defense with ``bench/`` inside (``bench.harness``); a **run folder** (written by
``bastion train``) holds ``config.yaml``, ``history.jsonl`` and whatever ``bastion eval``
(``eval/*.json``) and ``bastion certify`` (``certify/*.jsonl``) added. Both become a list
of ``report.ReportEntry``; nothing is computed again, only read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bastion.bench.leaderboard import leaderboard_columns
from bastion.bench.report import ReportEntry
from bastion.bench.suite import certificate_norm, smoothing_noise
from bastion.certify import read_rows
from bastion.certify.lipschitz import certificate_from_rows
from bastion.certify.rowstore import read_header
from bastion.certify.summary import rows_to_certificate, summarize
from bastion.checks import CheckFinding
from bastion.errors import MissingFileError
from bastion.records import Certificate, EvalResult
from bastion.records.io import load_record
from bastion.runs import load_config_of, read_history

log = logging.getLogger(__name__)


def is_bench_folder(path: str | Path) -> bool:
    return (Path(path) / "leaderboard.json").is_file()


def _merge(records: list[EvalResult]) -> EvalResult | None:
    """One record from several on the same points (outcomes joined), else the largest."""
    if not records:
        return None
    records = sorted(records, key=len, reverse=True)
    base = records[0]
    for r in records[1:]:
        if len(r) == len(base) and r.index.equal(base.index) and r.labels.equal(base.labels):
            for o in r.outcomes:
                base = base.with_outcome(o)
        else:
            log.info("a record on other points (%d) is left out of the report", len(r))
    return base


def _settings(ev: EvalResult | None, extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(extra)
    if ev is not None:
        out["attacks"] = [o.params for o in ev.outcomes]
    return out


def _bench_entry(bench: Path, row: dict[str, Any]) -> ReportEntry:
    name = row["name"]
    folder = bench / name / "bench"
    # the trained run: the row's own record (a recipe with ``train_dir`` trains elsewhere)
    run_dir = Path(row["run_dir"]) if row.get("run_dir") else bench / name
    evals = [load_record(EvalResult, p) for p in sorted(folder.glob("attacks-*.json"))]
    evals += [load_record(EvalResult, p) for p in sorted(folder.glob("minimal-*.json"))]
    ev = _merge(evals)
    cert: Certificate | None = None
    if (folder / "certify.jsonl").is_file() and row.get("acr") is not None:
        noise = smoothing_noise(load_config_of(run_dir)) if run_dir.is_dir() else None
        norm = certificate_norm(noise[0]) if noise else "l2"
        cert = rows_to_certificate(read_rows(folder / "certify.jsonl"), norm)
    elif (folder / "certify-mmcert.jsonl").is_file() and row.get("acr") is not None:
        from bastion.certify.mmcert import direction_certificates

        path = folder / "certify-mmcert.jsonl"
        cert = direction_certificates(read_rows(path), read_header(path))["joint"]
    elif (folder / "certify-lipschitz.jsonl").is_file() and row.get("acr") is not None:
        cert = certificate_from_rows(read_rows(folder / "certify-lipschitz.jsonl"))
    findings: list[CheckFinding] = []
    if (folder / "checks.json").is_file():
        data = json.loads((folder / "checks.json").read_text())
        findings = [CheckFinding.from_dict(f) for f in data["findings"]]
    examples = None
    shots = sorted(folder.glob("examples-*.safetensors"))
    if shots:
        from bastion.bench.examples import load_examples

        examples = load_examples(shots[0])
    settings = {k: row[k] for k in ("seeds", "versions", "config_hash", "weights_hash",
                                    "protocol_hash", "source") if k in row}
    return ReportEntry(name=name, row=row, history=read_history(run_dir) if run_dir.is_dir()
                       else None, evaluation=ev, certificate=cert, findings=findings,
                       examples=examples, settings=_settings(ev, settings))


def _run_entry(run_dir: Path) -> ReportEntry:
    cfg = load_config_of(run_dir)
    evals = [load_record(EvalResult, p) for p in sorted((run_dir / "eval").glob("*.json"))]
    ev = _merge(evals)
    row: dict[str, Any] = {"name": run_dir.name, "method": cfg.method, "model": cfg.model,
                           "dataset": cfg.dataset}
    if ev is not None:
        from bastion.bench.harness import outcome_label

        row["clean_acc"] = float(ev.clean_correct.double().mean())
        for o in ev.outcomes:
            if o.eps == float("inf"):
                continue
            part = EvalResult(index=ev.index, labels=ev.labels, clean_pred=ev.clean_pred,
                              outcomes=(o,))
            row[f"robust_acc/{o.norm}/{o.eps:g}/{outcome_label(o.params)}"] = float(
                part.adv_correct(o.eps).double().mean())
    cert = None
    files = sorted((run_dir / "certify").glob("*.jsonl"))
    files = [f for f in files if ".rank" not in f.name]
    if files:
        rows = read_rows(files[0])
        noise = smoothing_noise(cfg)
        norm = certificate_norm(noise[0]) if noise else "l2"
        cert = rows_to_certificate(rows, norm)
        s = summarize(rows, norm=norm)
        for r, a in zip(s["radii"], s["certified_accuracy"], strict=True):
            row[f"certified_acc/{norm}/{r:g}"] = a
        row["acr"] = s["acr"]
    hist = read_history(run_dir)
    if hist is not None:
        row["train_seconds"] = sum(float(e.get("train_seconds") or 0.0) for e in hist.epochs)
    return ReportEntry(name=run_dir.name, row=row, history=hist, evaluation=ev,
                       certificate=cert, settings=_settings(ev, {"config": str(run_dir)}))


def collect(path: str | Path) -> tuple[str, list[ReportEntry], list[tuple[str, str]], list[str]]:
    """``(title, entries, columns, notes)`` for ``report.write_report`` from a bench
    folder or a run folder."""
    path = Path(path)
    if is_bench_folder(path):
        doc = json.loads((path / "leaderboard.json").read_text())
        rows = doc["rows"]
        entries = [_bench_entry(path, r) for r in rows]
        notes = [doc.get("description") or ""]
        if doc.get("protocol"):
            p = doc["protocol"]
            notes.append(f"Protocol: the first {p['n_test']} test images for every defense; "
                         f"attack seed {p['seed']}.")
        return (f"bastion bench: {doc.get('suite', path.name)}", entries,
                leaderboard_columns(rows), [n for n in notes if n])
    if (path / "config.yaml").is_file():
        entry = _run_entry(path)
        notes = ["A single run folder: the gradient-masking checks run with 'bastion bench' "
                 "(no checks were run for this page)."]
        return (f"bastion run: {path.name}", [entry], leaderboard_columns([entry.row]), notes)
    raise MissingFileError(f"{path} is neither a bench folder (no leaderboard.json) nor a run "
                           "folder (no config.yaml)")


__all__ = ["collect", "is_bench_folder"]
