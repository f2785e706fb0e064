"""A self-contained HTML report of one run or a leaderboard of several defenses.

``render_report`` turns a list of ``ReportEntry`` (one per defense: its leaderboard row and
whatever records it has) into one HTML page; ``write_report`` writes it atomically. The
page holds, in order:

1. the title and the notes;
2. the leaderboard table (``columns``, one row per entry);
3. the warnings of the gradient-masking checks (``bastion.checks.CheckFinding``), each
   with its evidence, or a line saying there are none;
4. robust accuracy against eps, one plot per norm over every entry with an evaluation
   (``EvalResult.robust_accuracy_curve``), with the values as a table;
5. certified accuracy against radius, one plot per norm over every entry with a
   certificate (``plot_certified_accuracy``);
6. the training curves of every entry with a history (``plot_history``);
7. the adversarial-example grid of every entry with examples (``plot_adversarial_grid``);
8. the settings of every entry (collapsible): evaluation settings, attack parameters,
   config hash, seeds, versions, and the attacks of its evaluation record.

Sections 4-7 are left out when no entry has the records they need. ``render_combined``
puts several suites on one page (say the Fashion-MNIST suite and the two-view MMCert
suite): each is a part with its own title and the sections above, never one mixed table.
The page needs nothing outside itself: the plots are PNG images embedded as base64
``data:`` URIs, the CSS is inline, and there is no script, font or link to fetch. Every
string that comes from the data (names, row values, messages, settings) is HTML-escaped.

Cell formatting (``format_cell``): a missing or None value is "–"; a float is shown as
a percentage with one decimal ("87.5%") when it lies in [0, 1] and its key looks like an
accuracy (it ends with "acc" or starts with "clean", "robust" or "certified"), unless the
key names a quantity that is not an accuracy (it contains "eps", "radius", "sigma",
"loss", "seconds", "time" or "lr"); other floats get 4 significant digits, bools
"yes"/"no", lists and dicts compact JSON, anything else ``str``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from bastion.bench.examples import Examples
from bastion.bench.plots import (
    certified_accuracy_figure,
    history_figure,
    plot_adversarial_grid,
    plot_robust_accuracy_curve,
    png_bytes,
)
from bastion.checks import CheckFinding
from bastion.errors import BastionError, InputError, InputTypeError
from bastion.metrics import average_certified_radius, certified_accuracy
from bastion.records import Certificate, EvalResult, History
from bastion.records.io import atomic_write_bytes
from bastion.types import NORMS

log = logging.getLogger(__name__)

__all__ = ["ReportEntry", "ReportPart", "format_cell", "render_combined", "render_report",
           "write_combined", "write_report"]

MISSING = "\u2013"
"""What a cell shows for a missing value (an en dash)."""

_ACC_PREFIXES = ("clean", "robust", "certified", "asr", "smoothed_robust", "abstain")
_NOT_ACC = ("eps", "radius", "sigma", "loss", "seconds", "time", "lr")
_ROBUST = ("train_robust_acc", "test_robust_acc")
_CLEAN = ("train_clean_acc", "test_clean_acc")
_NORM_HEADS = {"linf": "L\u221e (linf)", "l2": "L2 (l2)", "l1": "L1 (l1)", "l0": "L0 (l0)"}
_MINIMAL_GRID = 41  # radii at which a minimal-perturbation outcome's curve is drawn


@dataclass(frozen=True)
class ReportEntry:
    """One defense (or one run) of the report.

    Args:
        name: the defense's name (shown as given, escaped).
        row: its leaderboard row, a flat JSON dict; ``columns`` of ``render_report``
            picks the keys shown.
        history: its training curves, or None.
        evaluation: its attacks; robust accuracy against eps comes from
            ``evaluation.robust_accuracy_curve(norm=...)``. None: no evaluation.
        certificate: its certified radii (with ``labels``), or None.
        findings: what the gradient-masking checks found (empty: no warnings).
        examples: clean and adversarial images for the grid, or None.
        settings: what to print about how it was evaluated (attack parameters, AutoAttack
            components, config hash, seeds, versions), JSON-like values.
    """

    name: str
    row: Mapping[str, Any]
    history: History | None = None
    evaluation: EvalResult | None = None
    certificate: Certificate | None = None
    findings: Sequence[CheckFinding] = ()
    examples: Examples | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError("ReportEntry.name must be a non-empty string")
        checks: tuple[tuple[str, type], ...] = (
            ("history", History), ("evaluation", EvalResult), ("certificate", Certificate),
            ("examples", Examples),
        )
        for attr, cls in checks:
            value = getattr(self, attr)
            if value is not None and not isinstance(value, cls):
                raise InputTypeError(f"ReportEntry.{attr} must be a {cls.__name__} or None, "
                                     f"got {type(value).__name__}")
        for attr in ("row", "settings"):
            if not isinstance(getattr(self, attr), Mapping):
                raise InputTypeError(f"ReportEntry.{attr} must be a dict, got "
                                     f"{type(getattr(self, attr)).__name__}")
        if isinstance(self.findings, CheckFinding | str | Mapping):
            raise InputTypeError("ReportEntry.findings must be a sequence of CheckFinding")
        findings = tuple(self.findings)
        if not all(isinstance(f, CheckFinding) for f in findings):
            raise InputTypeError("ReportEntry.findings must hold CheckFinding objects")
        object.__setattr__(self, "findings", findings)


# ---------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    """``str(value)`` HTML-escaped, quotes included (safe in text and attributes)."""
    return html.escape(str(value), quote=True)


def _is_accuracy_key(key: str) -> bool:
    k = key.lower()
    if any(part in k for part in _NOT_ACC):
        return False
    return k.endswith("acc") or k.startswith(_ACC_PREFIXES)


def _number(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "\u221e" if v > 0 else "-\u221e"
    return f"{v:.4g}"


def format_cell(key: str, value: Any) -> str:
    """The text of a leaderboard cell (not escaped); the rule is in the module docstring.

    Example:
        >>> format_cell("test_robust_acc", 0.4567), format_cell("eps", 0.1)
        ('45.7%', '0.1')
        >>> format_cell("clean", None), format_cell("epochs", 30), format_cell("ok", True)
        ('–', '30', 'yes')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if _is_accuracy_key(str(key)) and 0.0 <= value <= 1.0:
            return f"{100.0 * value:.1f}%"
        return _number(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def _plain(value: Any) -> str:
    """A settings / evidence value as text (no percentages), not escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, scalar-or-list)`` pairs of a nested mapping, in order."""
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flat(v, f"{key}.")
        else:
            out.append((key, v))
    return out


def _inline(value: Any) -> str:
    """A value on one line (not escaped): ``k=v, t.eps=0.1`` for a mapping, compact JSON
    for lists, ``_plain`` for scalars."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in _flat(value)) or "{}"
    return _plain(value)


def _items_table(items: Sequence[Mapping[str, Any]]) -> str:
    """A list of mappings (e.g. AutoAttack's components) as a table: one row per item,
    or one column per item when the items have many more keys than there are items."""
    keys: list[str] = []
    for item in items:
        keys += [str(k) for k in item if str(k) not in keys]
    dicts = [{str(k): v for k, v in it.items()} for it in items]

    def cell(d: Mapping[str, Any], k: str) -> str:
        return f"<td><code>{_e(_inline(d[k]))}</code></td>" if k in d else f"<td>{MISSING}</td>"

    if len(keys) > 8 and len(keys) > 2 * len(items):  # transposed: a column per item
        rows = "".join(f"<tr><th>{_e(k)}</th>{''.join(cell(d, k) for d in dicts)}</tr>"
                       for k in keys)
        return f'<table class="kv sub">{rows}</table>'
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = "".join("<tr>" + "".join(cell(d, k) for k in keys) + "</tr>" for d in dicts)
    return f'<table class="kv sub"><tr>{head}</tr>{rows}</table>'


def _value_html(value: Any, depth: int = 0) -> str:
    """A settings value as HTML: scalars as text; a mapping as a nested key/value table at
    the first level, on one line (``k=v, ...``) below it; a list of scalars
    comma-separated, a list of lists of scalars as ``(a, b), (c, d)``; a list of mappings
    (e.g. AutoAttack's components) as a table with one row per item; anything else as
    indented JSON."""
    if _is_scalar(value):
        return f"<code>{_e(_plain(value))}</code>"
    if isinstance(value, Mapping):
        return _kv_table(value, depth + 1) if depth == 0 else f"<code>{_e(_inline(value))}</code>"
    if isinstance(value, list | tuple):
        if all(_is_scalar(v) for v in value):
            return f"<code>{_e(', '.join(_plain(v) for v in value)) or '[]'}</code>"
        if value and all(isinstance(v, Mapping) for v in value):
            return _items_table(value)
        if all(isinstance(v, list | tuple) and all(_is_scalar(x) for x in v) for v in value):
            # a list of short rows (a curve of (eps, accuracy) pairs, ...): one line
            return "<code>" + _e(", ".join(
                "(" + ", ".join(_plain(x) for x in v) + ")" for v in value)) + "</code>"
        return f"<pre>{_e(json.dumps(value, default=str, indent=2))}</pre>"
    return f"<code>{_e(value)}</code>"  # a path, an enum, ...: its str


def _kv_table(mapping: Mapping[str, Any], depth: int = 0) -> str:
    if not mapping:
        return '<p class="muted">(none)</p>'
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v, depth)}</td></tr>"
                   for k, v in mapping.items())
    return f'<table class="kv{" sub" if depth else ""}">{rows}</table>'


def _img(fig: Figure, alt: str) -> str:
    """``fig`` as an ``<img>`` with a base64 PNG data URI and its pixel size."""
    data = png_bytes(fig)
    width, height = struct.unpack(">II", data[16:24])
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<img src="data:image/png;base64,{b64}" width="{width}" height="{height}" '
            f'alt="{_e(alt)}">')


def _figure(make: Callable[[], Figure], alt: str, caption: str = "") -> str:
    """A ``<figure>`` of the plot ``make()`` draws; its error message when it cannot."""
    try:
        img = _img(make(), alt)
    except BastionError as err:
        log.warning("report: could not plot %s: %s", alt, err)
        return f'<p class="error">Could not plot {_e(alt)}: {_e(err)}</p>'
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{img}{cap}</figure>"


def _unique(names: Iterable[str]) -> list[str]:
    """The names, a repeated one suffixed " (2)", " (3)", ... (plot legends need keys)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


# ---------------------------------------------------------------------------- sections


def _leaderboard(entries: Sequence[ReportEntry], columns: Sequence[tuple[str, str]]) -> str:
    named = any(key == "name" for key, _ in columns)
    warned = any(e.findings for e in entries)
    head = ([] if named else ["<th>defense</th>"]) + [
        f'<th title="{_e(key)}">{_e(header)}</th>' for key, header in columns]
    if warned:
        head.append("<th>warnings</th>")
    rows = []
    for i, e in enumerate(entries):
        cells = [] if named else [f'<th scope="row">{_e(e.name)}</th>']
        for key, _ in columns:
            value = e.row.get(key, e.name if key == "name" else None)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            cls = ' class="num"' if numeric else ' class="na"' if value is None else ""
            cells.append(f"<td{cls}>{_e(format_cell(key, value))}</td>")
        if warned:
            n = len(e.findings)
            cells.append(f'<td class="num"><a class="badge warn" href="#warnings-{i}">{n}</a>'
                         "</td>" if n else f'<td class="num">{MISSING}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="board"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _warnings(entries: Sequence[ReportEntry]) -> str:
    if not any(e.findings for e in entries):
        return ('<p class="ok">No warnings: the checks found no sign of gradient masking or '
                "of a broken evaluation.</p>")
    parts = []
    for i, e in enumerate(entries):
        if not e.findings:
            continue
        items = []
        for f in e.findings:
            ev = (_kv_table(f.evidence, 1) if f.evidence
                  else '<p class="muted">(no evidence recorded)</p>')
            items.append(f'<li class="finding"><p><code class="check">{_e(f.name)}</code> '
                         f"{_e(f.message)}</p>{ev}</li>")
        n = len(e.findings)
        parts.append(f'<div class="entry" id="warnings-{i}"><h3>{_e(e.name)} '
                     f'<span class="badge warn">{n} warning{"s" if n > 1 else ""}</span></h3>'
                     f'<ul class="findings">{"".join(items)}</ul></div>')
    clean = [e.name for e in entries if not e.findings]
    if clean:
        parts.append(f'<p class="ok">No warnings for: {_e(", ".join(clean))}.</p>')
    return "".join(parts)


def _radii(ev: EvalResult, norm: str) -> tuple[list[float], bool]:
    """The radii at which ``ev`` measured ``norm`` (0 and every finite eps; a grid when it
    has a minimal-perturbation outcome), and whether it has one."""
    outs = ev.select(norm=norm)
    finite = sorted({0.0} | {o.eps for o in outs if math.isfinite(o.eps)})
    minimal = [o for o in outs if o.minimal]
    if not minimal:
        return finite, False
    top = max(finite) if len(finite) > 1 else max(float(o.perturbation.max()) for o in minimal)
    grid = torch.linspace(0.0, top, _MINIMAL_GRID, dtype=torch.float64).tolist() if top > 0 else []
    return sorted(set(finite) | set(grid)), True


def _robust(entries: Sequence[ReportEntry]) -> str:
    with_eval = [(n, e.evaluation) for n, e in zip(_unique(e.name for e in entries), entries,
                                                    strict=True)
                 if e.evaluation is not None and e.evaluation.outcomes]
    parts = []
    for norm in NORMS:
        evals = [(n, ev) for n, ev in with_eval if ev.select(norm=norm)]
        if not evals:
            continue
        # the table's radii: 0 and every finite eps some entry attacked at
        cols = sorted({0.0} | {o.eps for _, ev in evals for o in ev.select(norm=norm)
                               if math.isfinite(o.eps)})
        curves: dict[str, dict[float, float]] = {}
        table: dict[str, dict[float, float]] = {}
        attacks: set[str] = set()
        for name, ev in evals:
            outs = ev.select(norm=norm)
            attacks |= {o.attack for o in outs}
            radii, minimal = _radii(ev, norm)
            # an entry's value at a radius it did not attack at would only be a bound;
            # a minimal-perturbation outcome measures every radius
            mine = cols if minimal else sorted({0.0} | {o.eps for o in outs})
            try:
                curves[name] = ev.robust_accuracy_curve(radii, norm=norm)
                table[name] = ev.robust_accuracy_curve(mine, norm=norm)
            except BastionError as err:
                log.warning("report: no robust accuracy curve for %s: %s", name, err)
        if not curves:
            continue
        head = "".join(f'<th class="num">{_e(_number(r))}</th>' for r in cols)
        body = "".join(
            f'<tr><th scope="row">{_e(name)}</th>' + "".join(
                f'<td class="num">{f"{100 * t[r]:.1f}%" if r in t else MISSING}</td>'
                for r in cols) + "</tr>"
            for name, t in table.items())
        caption = (f"Worst case over the attacks of each evaluation "
                   f"({_e(', '.join(sorted(attacks)))}); eps in [0, 1] pixel units of "
                   f"{_e(norm)}; eps 0 is clean accuracy.")
        parts.append(
            f"<h3>{_e(_NORM_HEADS.get(norm, norm))}</h3>"
            + _figure(lambda c=curves, n=norm: plot_robust_accuracy_curve(c, norm=n),
                      f"robust accuracy against eps ({norm})", caption)
            + '<div class="scroll"><table class="board small"><thead><tr><th>defense \\ eps'
              f"</th>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    return "".join(parts)


def _certified(entries: Sequence[ReportEntry]) -> str:
    by_norm: dict[str, dict[str, Certificate]] = {}
    skipped = []
    for name, e in zip(_unique(e.name for e in entries), entries, strict=True):
        c = e.certificate
        if c is None:
            continue
        if c.labels is None:
            skipped.append(name)
            continue
        by_norm.setdefault(c.norm, {})[name] = c
    parts = []
    for norm, runs in by_norm.items():
        rows = "".join(
            f'<tr><th scope="row">{_e(name)}</th><td>{_e(c.method)}</td>'
            f'<td class="num">{len(c)}</td>'
            f'<td class="num">{100 * float(certified_accuracy(c, None, [0.0])[0]):.1f}%</td>'
            f'<td class="num">{_e(_number(average_certified_radius(c)))}</td>'
            f'<td><code>{_e(_plain(c.params))}</code></td></tr>'
            for name, c in runs.items())
        parts.append(
            f"<h3>{_e(_NORM_HEADS.get(norm, norm))}</h3>"
            + _figure(lambda r=runs, n=norm: certified_accuracy_figure(
                r, title=f"certified accuracy vs radius ({n})"),
                f"certified accuracy against radius ({norm})",
                f"Radius in {_e('elements' if norm == 'l0' else '[0, 1] pixel units')} of "
                f"{_e(norm)}; abstentions count as wrong.")
            + '<div class="scroll"><table class="board small"><thead><tr><th>defense</th>'
              "<th>certifier</th><th>inputs</th><th>certified acc. at 0</th>"
              "<th>avg. certified radius</th><th>parameters</th></tr></thead>"
              f"<tbody>{rows}</tbody></table></div>")
    if skipped:
        parts.append(f'<p class="muted">Not plotted (the certificate has no labels): '
                     f"{_e(', '.join(skipped))}.</p>")
    return "".join(parts)


def _history_plot(name: str, h: History) -> str:
    if not len(h):
        return f'<p class="muted">{_e(name)}: the history has no epochs.</p>'
    have = {k for e in h.epochs for k, v in e.to_dict().items() if v is not None}
    robust = [k for k in _ROBUST if k in have]
    clean = [k for k in _CLEAN if k in have]
    if not robust and not clean:
        return f'<p class="muted">{_e(name)}: the history has no measured accuracies.</p>'
    metrics, clean_metrics = (robust, clean) if robust else (clean, [])
    return _figure(lambda: history_figure(h, metrics, clean_metrics=clean_metrics),
                   f"training curves of {name}",
                   f"{len(h)} epoch{'s' if len(h) > 1 else ''}; ★ marks the best robust test "
                   "accuracy.")


def _histories(entries: Sequence[ReportEntry]) -> str:
    return "".join(f'<div class="entry"><h3>{_e(e.name)}</h3>{_history_plot(e.name, e.history)}'
                   "</div>" for e in entries if e.history is not None)


def _grids(entries: Sequence[ReportEntry]) -> str:
    parts = []
    for e in entries:
        ex = e.examples
        if ex is None:
            continue
        broken = int(((ex.clean_pred == ex.labels) & (ex.adv_pred != ex.labels)).sum())
        right = int((ex.clean_pred == ex.labels).sum())
        eps = "" if math.isinf(ex.eps) else f", eps {_number(ex.eps)}"
        caption = (f"{_e(ex.attack)} ({_e(ex.norm)}{_e(eps)}) on the first {len(ex)} test "
                   f"points: {right} classified correctly when clean, {broken} of them broken "
                   "by the attack.")
        parts.append(f'<div class="entry"><h3>{_e(e.name)}</h3>'
                     + _figure(lambda x=ex: plot_adversarial_grid(x),
                               f"adversarial examples of {e.name}", caption) + "</div>")
    return "".join(parts)


def _outcomes(ev: EvalResult) -> str:
    rows = []
    for o in ev.outcomes:
        try:
            ok = ev.adv_correct(o.eps, norm=o.norm, attack=o.attack)
            acc = f"{100 * float(ok.double().mean()):.1f}%"
        except BastionError:
            acc = MISSING
        rows.append(f"<tr><td>{_e(o.attack)}</td><td>{_e(o.norm)}</td>"
                    f'<td class="num">{_e(_number(o.eps))}</td><td class="num">{acc}</td>'
                    f'<td class="num">{o.seconds:.1f}</td><td><code>{_e(_inline(o.params))}</code>'
                    "</td></tr>")
    return ('<table class="kv outcomes"><tr><th>attack</th><th>norm</th><th>eps</th>'
            "<th>robust acc.</th><th>seconds</th><th>parameters</th></tr>"
            f'{"".join(rows)}</table>')


def _settings(entries: Sequence[ReportEntry]) -> str:
    parts = []
    for i, e in enumerate(entries):
        body = (_kv_table(e.settings) if e.settings
                else '<p class="muted">(no settings recorded)</p>')
        ev = e.evaluation
        if ev is not None:
            body += (f"<h4>evaluation record: {len(ev)} points</h4>"
                     + (_kv_table(ev.params) if ev.params else "")
                     + (_outcomes(ev) if ev.outcomes else '<p class="muted">no attacks</p>'))
        if e.certificate is not None:
            c = e.certificate
            body += (f"<h4>certificate: {_e(c.method)}, {len(c)} inputs, {_e(c.norm)}</h4>"
                     + (_kv_table(c.params) if c.params else ""))
        parts.append(f'<details id="settings-{i}"{" open" if len(entries) == 1 else ""}>'
                     f'<summary>{_e(e.name)}</summary><div class="scroll">{body}</div>'
                     "</details>")
    return "".join(parts)


_CSS = """
:root { --fg: #1d2430; --muted: #5f6b7a; --line: #d9dee5; --bg: #ffffff; --alt: #f5f7fa;
        --accent: #1f5fae; --warn: #b3261e; --warnbg: #fdecea; --ok: #1e7b34; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
             "Liberation Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.35em; margin: 40px 0 12px; padding-bottom: 6px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1em; margin: 22px 0 8px; }
h2.suite { font-size: 1.6em; margin: 56px 0 4px; padding: 10px 0 6px; border-bottom: none;
           border-top: 4px solid var(--accent); }
section.suite section h2 { font-size: 1.25em; }
h4 { font-size: 1em; margin: 16px 0 6px; color: var(--muted); }
.meta, .muted { color: var(--muted); }
nav { margin: 14px 0 4px; font-size: 0.95em; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
nav a:hover { text-decoration: underline; }
ul.notes { margin: 8px 0; padding-left: 20px; color: var(--fg); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
table.board { min-width: 50%; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
table.board th, table.board td { padding: 7px 12px; border-bottom: 1px solid var(--line);
                                  text-align: left; white-space: nowrap; }
table.board thead th { background: #e9eef5; border-bottom: 2px solid #b9c3d0;
                       position: sticky; top: 0; }
table.board tbody tr:nth-child(even) { background: var(--alt); }
table.board tbody tr:hover { background: #eaf1fb; }
table.board.small th, table.board.small td { padding: 4px 10px; font-size: 0.92em; }
td.num, th.num, table.board td.num, table.board th.num { text-align: right; }
table.board td.na { text-align: center; color: var(--muted); }
table.kv { margin: 4px 0 8px; font-size: 0.92em; }
table.kv th, table.kv td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
                           vertical-align: top; }
table.kv th { background: var(--alt); font-weight: 600; }
table.kv.sub { margin: 0; }
table.kv.sub td code { white-space: nowrap; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo,
                         Consolas, monospace; font-size: 0.9em; }
pre { margin: 0; white-space: pre-wrap; }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8em;
         font-weight: 600; background: var(--alt); text-decoration: none; }
.badge.warn { background: var(--warnbg); color: var(--warn); }
.ok { color: var(--ok); font-weight: 600; }
.error { color: var(--warn); }
ul.findings { list-style: none; padding: 0; margin: 0; }
li.finding { border-left: 4px solid var(--warn); background: var(--warnbg);
             padding: 8px 12px; margin: 8px 0; border-radius: 0 4px 4px 0; }
li.finding p { margin: 0 0 6px; }
li.finding table.kv { background: #fff; }
code.check { font-weight: 700; color: var(--warn); }
details { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 0 12px; }
details[open] { padding-bottom: 10px; }
summary { cursor: pointer; font-weight: 600; padding: 8px 0; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.85em; }
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bastion")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ReportPart:
    """One suite of a combined page (``render_combined``): its title, entries, leaderboard
    columns and notes, as ``render_report`` takes them."""

    title: str
    entries: Sequence[ReportEntry]
    columns: Sequence[tuple[str, str]]
    notes: Sequence[str] = ()


def _checked(entries: Sequence[ReportEntry], columns: Sequence[tuple[str, str]]
             ) -> tuple[list[ReportEntry], list[tuple[str, str]]]:
    if isinstance(entries, ReportEntry) or not isinstance(entries, Sequence):
        raise InputTypeError("entries must be a sequence of ReportEntry")
    entries = list(entries)
    if not entries:
        raise InputError("nothing to report: entries is empty")
    if not all(isinstance(e, ReportEntry) for e in entries):
        raise InputTypeError("entries must hold ReportEntry objects")
    cols = []
    for c in columns:
        if not (isinstance(c, tuple | list) and len(c) == 2 and all(isinstance(s, str) for s in c)):
            raise InputTypeError(f"columns must be (row key, header) string pairs, got {c!r}")
        cols.append((c[0], c[1]))
    return entries, cols


def _sections(entries: list[ReportEntry], cols: list[tuple[str, str]]
              ) -> list[tuple[str, str, str]]:
    """``(id, heading, html)`` of the page's sections that have content, in order."""
    sections = [
        ("leaderboard", "Leaderboard" if len(entries) > 1 else "Summary",
         _leaderboard(entries, cols)),
        ("warnings", "Warnings", _warnings(entries)),
        ("robust", "Robust accuracy vs eps", _robust(entries)),
        ("certified", "Certified accuracy vs radius", _certified(entries)),
        ("training", "Training curves", _histories(entries)),
        ("examples", "Adversarial examples", _grids(entries)),
        ("settings", "Settings", _settings(entries)),
    ]
    return [s for s in sections if s[2]]


def _count(entries: Sequence[ReportEntry]) -> str:
    return f"{len(entries)} defense{'s' if len(entries) > 1 else ''}"


def _part(entries: Sequence[ReportEntry], columns: Sequence[tuple[str, str]],
          notes: Sequence[str], prefix: str = "") -> tuple[str, str]:
    """``(top, body)`` of one report: the defense count, the notes and the section links;
    then the sections. ``prefix`` goes in front of every element id and in-page link (a
    part of a combined page)."""
    entries, cols = _checked(entries, columns)
    sections = _sections(entries, cols)
    n_warn = sum(len(e.findings) for e in entries)
    nav = "".join(
        f'<a href="#{sid}">{_e(heading)}'
        + (f' <span class="badge warn">{n_warn}</span>' if sid == "warnings" and n_warn else "")
        + "</a>" for sid, heading, _ in sections)
    if isinstance(notes, str):
        notes = [notes]
    notes_html = ("<ul class=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in notes)
                  + "</ul>") if notes else ""
    top = f'<p class="meta">{_count(entries)}</p>{notes_html}<nav>{nav}</nav>'
    body = "".join(f'<section id="{sid}"><h2>{_e(heading)}</h2>{content}</section>'
                   for sid, heading, content in sections)
    if prefix:  # data strings are escaped, so every ' id="' and 'href="#' is ours
        top, body = (t.replace(' id="', f' id="{prefix}').replace('href="#', f'href="#{prefix}')
                     for t in (top, body))
    return top, body


def _page(title: str, header: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{_e(title)}</h1>{header}</header>\n{body}\n"
        f"<footer>Generated by bastion {_e(_version())}. The page is self-contained: "
        "images are embedded, nothing is loaded from elsewhere.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def render_report(
    entries: Sequence[ReportEntry],
    *,
    title: str,
    columns: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
) -> str:
    """The report page as one self-contained HTML string (see the module docstring).

    Args:
        entries: one per defense (one for a single run folder), in table order.
        title: the page title.
        columns: ``(row key, column header)`` pairs for the leaderboard table. The entry
            name comes first, headed "defense", unless a column has the key ``"name"``
            (which falls back to the entry name when the row lacks it). A "warnings"
            column with each entry's number of findings is added when any entry has one.
        notes: lines printed under the title (plain text, escaped).

    Returns:
        The HTML document.

    Raises:
        InputError / InputTypeError: no entries, or malformed entries or columns.
    """
    head, body = _part(entries, columns, notes)
    return _page(title, head, body)


def render_combined(parts: Sequence[ReportPart], *, title: str) -> str:
    """Several suites on one self-contained page, one after the other: each part is what
    ``render_report`` would show of it (its own leaderboard, warnings, plots and settings;
    suites on different datasets or threat models are never mixed in one table), under the
    part's title, with a table of contents at the top. Element ids are prefixed per part
    (``s0-``, ``s1-``, ...) so the links of each part stay its own.

    Raises:
        InputError / InputTypeError: no parts, or a part ``render_report`` would refuse.
    """
    if isinstance(parts, ReportPart) or not isinstance(parts, Sequence) or not all(
            isinstance(p, ReportPart) for p in parts):
        raise InputTypeError("parts must be a sequence of ReportPart")
    if not parts:
        raise InputError("nothing to report: parts is empty")
    toc, body = [], []
    for i, part in enumerate(parts):
        head, inner = _part(part.entries, part.columns, part.notes, prefix=f"s{i}-")
        body.append(f'<section class="suite" id="s{i}"><h2 class="suite">{_e(part.title)}</h2>'
                    f"{head}{inner}</section>")
        toc.append(f'<a href="#s{i}">{_e(part.title)} ({_count(part.entries)})</a>')
    header = f'<p class="meta">{len(parts)} suites</p><nav>{"".join(toc)}</nav>'
    return _page(title, header, "".join(body))


def write_report(
    path: str | os.PathLike[str],
    entries: Sequence[ReportEntry],
    *,
    title: str,
    columns: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
) -> Path:
    """Render the report (``render_report``) and write it to ``path`` atomically (UTF-8).

    Returns:
        ``path`` as a ``Path``.
    """
    return _write(path, render_report(entries, title=title, columns=columns, notes=notes))


def write_combined(path: str | os.PathLike[str], parts: Sequence[ReportPart], *,
                   title: str) -> Path:
    """Render several suites on one page (``render_combined``) and write it atomically."""
    return _write(path, render_combined(parts, title=title))


def _write(path: str | os.PathLike[str], page: str) -> Path:
    out = Path(path)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
