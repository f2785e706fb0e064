"""The HTML report: self-contained, escaped, every column and plot present, and it renders
in a headless browser (Debian's ``chromium``; the test is skipped without one)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

from bastion.attacks.evaluate import evaluate_attacks, evaluate_minimal
from bastion.attacks.spec import AttackSpec
from bastion.bench.examples import adversarial_examples
from bastion.bench.report import (
    ReportEntry,
    ReportPart,
    format_cell,
    render_combined,
    render_report,
    write_report,
)
from bastion.certify.summary import rows_to_certificate
from bastion.checks import CheckFinding
from bastion.data import load_dataset
from bastion.errors import InputError, InputTypeError
from bastion.records import CertificationRow, History

EVIL = "<script>x</script>"
COLUMNS = [("method", "method"), ("clean_acc", "clean acc."),
           ("robust_acc", "robust acc. (L\u221e 0.1)"), ("certified_acc", "certified acc."),
           ("eps", "eps"), ("epochs", "epochs"), ("note", f"note {EVIL}")]


def _history(epochs: int, peak: int) -> History:
    return History.of([{
        "epoch": t, "train_loss": 2.0 / t, "lr": 0.1,
        "train_robust_acc": min(0.9, 0.2 + 0.07 * t),
        "test_robust_acc": 0.2 + 0.04 * min(t, peak) - 0.01 * max(0, t - peak),
        "train_clean_acc": min(0.99, 0.5 + 0.05 * t), "test_clean_acc": 0.5 + 0.04 * min(t, 8),
    } for t in range(1, epochs + 1)])


def _certificate(seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(60, generator=g) * scale
    return rows_to_certificate([
        CertificationRow(index=i, label=i % 10, prediction=i % 10 if r[i] > 0.1 else 0,
                         radius=float(r[i]) if r[i] >= 0.05 else 0.0,
                         abstained=bool(r[i] < 0.05))
        for i in range(60)], method="smoothing-gaussian")


def _fit(noise: float) -> nn.Module:
    """An MLP on scikit-learn's 8x8 digits (a second of training); ``noise``: Gaussian
    noise added to the training images."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        x = (train.images + noise * torch.randn_like(train.images)).clamp(0, 1)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), train.labels).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def entries() -> list[ReportEntry]:
    """Three defenses: two with every record (real attacks on digits models) and one,
    named like an injected script, with nothing but a partial row."""
    test = load_dataset("digits", "test")
    x, y = test.images[:80], test.labels[:80]
    specs = [AttackSpec(threat={"eps": e, "steps": 10}) for e in (0.05, 0.1, 0.2)]
    specs += [AttackSpec(threat={"eps": e, "norm": "l2", "steps": 10}) for e in (0.5, 1.0)]
    aa = AttackSpec(name="autoattack", threat={"eps": 0.1})
    out = []
    for i, (name, noise) in enumerate((("standard", 0.0), ("noise-0.3", 0.3))):
        model = _fit(noise)
        ev = evaluate_attacks(model, x, y, specs, seed=0)
        if i == 1:  # a minimal-perturbation outcome beside the fixed-eps ones
            fmn = evaluate_minimal(model, x, y, norm="l2", steps=20)
            ev = ev.with_outcome(fmn.outcomes[0])
        robust = ev.robust_accuracy_curve([0.0, 0.1], norm="linf")
        cert = _certificate(i, 1.0 + i)
        findings = [] if i == 0 else [
            CheckFinding(name="non-monotone-eps",
                         message=f"robust accuracy rose with eps {EVIL}; rerun with more steps",
                         evidence={"eps": [0.1, 0.2], "robust_acc": {"0.1": 0.31, "0.2": 0.4},
                                   "note": EVIL}),
            CheckFinding(name="large-eps", message="accuracy at eps 1.0 is not ~0",
                         evidence={"eps": 1.0, "robust_acc": 0.12,
                                   "curve": [[0.25, 0.5], [0.5, 0.12]]}),
        ]
        out.append(ReportEntry(
            name=name,
            row={"method": "standard" if noise == 0 else "gaussian-augmentation",
                 "clean_acc": robust[0.0], "robust_acc": robust[0.1],
                 "certified_acc": 0.42 + 0.1 * i, "eps": 0.1, "epochs": 12 + i,
                 "note": EVIL if i else None},
            history=_history(12 + i, 5 + 3 * i), evaluation=ev, certificate=cert,
            findings=findings,
            examples=adversarial_examples(model, x, y, specs[1], k=8,
                                          class_names=list(test.class_names)),
            settings={"config_hash": "3f2a9c1e", "seed": 0, "data_seed": 7,
                      "attacks": [s.to_dict() for s in specs[:2]],
                      "autoattack": aa.to_dict(),
                      "versions": {"torch": torch.__version__, "bastion": "test"},
                      f"key {EVIL}": f"value {EVIL}"},
        ))
    out.append(ReportEntry(name=EVIL, row={"method": EVIL, "clean_acc": 0.5}))
    return out


class _Page(HTMLParser):
    """Collects the leaderboard's header and rows, every image's src and every href."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.body: dict[str, str] = {}
        self._table = 0  # 1 inside the first table.board
        self._seen_board = False
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if "href" in a:
            self.hrefs.append(a["href"] or "")
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs}
        if tag == "table" and "board" in (a.get("class") or "").split() and not self._seen_board:
            self._seen_board, self._table = True, 1
        elif tag == "table" and self._table:
            self._table += 1
        if self._table == 1:
            if tag == "thead":
                self._in_head = True
            elif tag == "tr" and not self._in_head:
                self.rows.append([])
            elif tag in ("th", "td"):
                self._cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table -= 1
        if self._table == 1:
            if tag == "thead":
                self._in_head = False
            elif tag in ("th", "td") and self._cell is not None:
                text = "".join(self._cell).strip()
                (self.headers if self._in_head else self.rows[-1]).append(text)
                self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def page(entries) -> str:
    return render_report(entries, title=f"Digits leaderboard {EVIL}", columns=COLUMNS,
                         notes=[f"note with {EVIL}", "L\u221e eps 0.1, 80 test points"])


def test_format_cell_rules():
    assert format_cell("test_robust_acc", 0.4567) == "45.7%"
    assert format_cell("clean", 1.0) == "100.0%"
    assert format_cell("certified@0.5", 0.0) == "0.0%"
    assert format_cell("robust_acc", 1.5) == "1.5"  # not in [0, 1]: not a fraction
    assert format_cell("robust_eps", 0.1) == "0.1"  # a radius, not an accuracy
    assert format_cell("certified_radius", 0.25) == "0.25"
    assert format_cell("lr", 0.1) == "0.1" and format_cell("epochs", 30) == "30"
    assert format_cell("anything", None) == "\u2013"
    assert format_cell("flag", True) == "yes" and format_cell("x", 1 / 3) == "0.3333"
    assert format_cell("x", float("inf")) == "\u221e"
    assert format_cell("norms", ["linf", "l2"]) == '["linf", "l2"]'


def test_page_is_self_contained(page):
    p = _parse(page)
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert all(h.startswith("#") for h in p.hrefs)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"https?://", page)
    for banned in ("<script", "<link", "@import", "url(", "<iframe", "<object"):
        assert banned not in page.lower(), banned


def test_every_string_is_escaped(page):
    assert EVIL not in page and "<script" not in page
    escaped = html.escape(EVIL)
    # title, notes, column header, row value, entry name, finding, evidence, settings
    assert page.count(escaped) >= 8
    assert f"<title>Digits leaderboard {escaped}</title>" in page
    assert f"value {escaped}" in page and f"key {escaped}" in page


def test_leaderboard_shows_every_column(page, entries):
    p = _parse(page)
    assert p.headers == ["defense"] + [h for _, h in COLUMNS] + ["warnings"]
    assert [r[0] for r in p.rows] == [e.name for e in entries]  # escaped, read back as text
    assert all(len(r) == len(p.headers) for r in p.rows)
    evil = p.rows[2]
    assert evil[1] == EVIL and evil[2] == "50.0%"
    assert evil[3:-1] == ["\u2013"] * (len(COLUMNS) - 2)  # missing values
    assert p.rows[0][-1] == "\u2013" and p.rows[1][-1] == "2"  # warning counts
    assert p.rows[1][4] == "52.0%" and p.rows[1][5] == "0.1" and p.rows[1][6] == "13"
    for _, header in COLUMNS:
        assert html.escape(header) in page


def test_sections_and_plots(page, entries):
    for sid in ("leaderboard", "warnings", "robust", "certified", "training", "examples",
                "settings"):
        assert f'<section id="{sid}">' in page, sid
    p = _parse(page)
    # robust: linf and l2; certified: l2; training: 2; grids: 2
    assert len(p.srcs) == 2 + 1 + 2 + 2
    assert 'alt="robust accuracy against eps (linf)"' in page
    assert 'alt="robust accuracy against eps (l2)"' in page
    assert "non-monotone-eps" in page and "large-eps" in page
    assert "<code>(0.25, 0.5), (0.5, 0.12)</code>" in page  # a curve on one line
    assert "No warnings for: standard" in page
    assert page.count("<details") == len(entries)
    assert "apgd-ce" in page and "3f2a9c1e" in page  # AutoAttack components, config hash
    assert "fmn" in page


def test_single_entry_and_no_warnings(tmp_path):
    one = ReportEntry(name="run-1", row={"test_robust_acc": 0.3}, history=_history(4, 2),
                      settings={"seed": 1})
    out = write_report(tmp_path / "r" / "report.html", [one], title="run-1",
                       columns=[("test_robust_acc", "robust")])
    page = out.read_text(encoding="utf-8")
    assert out.name == "report.html" and not list(out.parent.glob(".*.tmp"))
    assert "No warnings" in page and "30.0%" in page
    assert '<section id="training">' in page and '<section id="robust">' not in page
    assert '<details id="settings-0" open>' in page  # one entry: settings shown
    assert len(_parse(page).srcs) == 1


def test_bad_arguments():
    with pytest.raises(InputError, match="empty"):
        render_report([], title="t", columns=[])
    with pytest.raises(InputTypeError):
        render_report([ReportEntry(name="a", row={})], title="t", columns=[("a", "b", "c")])
    with pytest.raises(InputTypeError):
        ReportEntry(name="a", row={}, history={"epochs": []})  # type: ignore[arg-type]
    with pytest.raises(InputTypeError):
        ReportEntry(name="a", row={}, findings=[{"name": "x"}])  # type: ignore[list-item]
    with pytest.raises(InputError):
        ReportEntry(name="", row={})


# ---------------------------------------------------------------- headless browser

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var b = document.body;
  b.setAttribute("data-images", String(imgs.length));
  b.setAttribute("data-loaded", String(ok.length));
  b.setAttribute("data-tables", String(document.querySelectorAll("table.board").length));
  b.setAttribute("data-width", String(Math.min.apply(null, ok.map(function (i) {
    return i.naturalWidth; }))));
});
</script>
</body>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update",
           "--disable-extensions", "--no-first-run", "--no-default-browser-check",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _required_chromium() -> str:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (scripts/get_chromium.sh installs Debian's "
                    "'chromium' as root; `make install` runs it)")
    return binary


def _probed(binary: str, tmp_path: Path, page: str
            ) -> tuple[subprocess.CompletedProcess, _Page, int]:
    """Load ``page`` with the probe script in headless Chromium: the run, its DOM (the
    probe's counts on ``<body>``) and the number of images the page holds."""
    n_images = len(_parse(page).srcs)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE, 1), encoding="utf-8")
    done = _run_chromium(binary, tmp_path / "profile", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return done, _parse(done.stdout), n_images


def test_report_renders_in_headless_chromium(tmp_path, entries):
    binary = _required_chromium()
    path = write_report(tmp_path / "report.html", entries, title=f"Digits {EVIL}",
                        columns=COLUMNS, notes=["rendered by the browser test"])
    done, dom, n_images = _probed(binary, tmp_path, path.read_text(encoding="utf-8"))
    assert dom.body.get("data-images") == str(n_images), (dom.body, done.stderr[-2000:])
    assert dom.body.get("data-loaded") == str(n_images)  # every image decoded
    assert int(dom.body.get("data-width", "0")) > 100
    assert int(dom.body.get("data-tables", "0")) >= 3
    assert dom.headers == ["defense"] + [h for _, h in COLUMNS] + ["warnings"]
    assert [r[0] for r in dom.rows] == [e.name for e in entries]
    assert done.stdout.count("<script") == 1  # only the probe; the planted name is text

    shot = tmp_path / "report.png"
    done = _run_chromium(binary, tmp_path / "profile2", f"--screenshot={shot}",
                         "--window-size=1280,4000", "--hide-scrollbars", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


def test_name_column_and_odd_settings():
    e = ReportEntry(name="run <a>", row={"acc": float("nan"), "robust_acc": 0.25},
                    settings={"path": Path("/tmp/x"), "nan": float("nan"),
                              "nested": [[1, 2], [3]], "deep": [[1, [2]], {"a": 1}],
                              "empty": {}, "flag": False})
    page = render_report([e], title="t", columns=[("name", "run"), ("robust_acc", "robust"),
                                                  ("acc", "acc")])
    p = _parse(page)
    assert p.headers == ["run", "robust", "acc"]  # no extra "defense" column
    assert p.rows == [["run <a>", "25.0%", "nan"]]  # the name falls back to the entry's
    assert "<code>/tmp/x</code>" in page and "<code>false</code>" in page
    assert "<code>(1, 2), (3)</code>" in page  # rows of scalars on one line
    assert "<pre>" in page and "(none)" in page  # anything deeper as indented JSON


# ---------------------------------------------------------------- several suites, one page

def _combined(entries) -> str:
    return render_combined([
        ReportPart(f"suite A {EVIL}", entries, COLUMNS, [f"A's note {EVIL}"]),
        ReportPart("suite B", _uncertified(entries), [("clean_acc", "clean")]),
    ], title="two suites")


def _uncertified(entries) -> list[ReportEntry]:
    return [e for e in entries if e.certificate is None][:1]


def test_combined_page_keeps_each_suite_apart(entries):
    page = _combined(entries)
    b_entries, b_cols = _uncertified(entries), [("clean_acc", "clean")]
    alone = [render_report(entries, title="A", columns=COLUMNS),
             render_report(b_entries, title="B", columns=b_cols)]
    assert page.count('<h2 class="suite">') == 2
    assert html.escape(f"suite A {EVIL}") in page and EVIL not in page
    # each part holds exactly the sections and images its own report would
    assert len(_parse(page).srcs) == sum(len(_parse(a).srcs) for a in alone)
    sections = re.findall(r'<section id="([^"]+)">', page)
    for i, a in enumerate(alone):
        own = re.findall(r'<section id="([^"]+)">', a)
        assert [x.removeprefix(f"s{i}-") for x in sections if x.startswith(f"s{i}-")] == own
    assert "s0-certified" in sections and "s1-certified" not in sections
    # every id is unique and every in-page link lands on one
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert {"s0", "s1", "s0-leaderboard", "s1-leaderboard"} <= links <= set(ids)


def test_combined_bad_arguments(entries):
    with pytest.raises(InputError, match="empty"):
        render_combined([], title="t")
    with pytest.raises(InputTypeError):
        render_combined([entries[0]], title="t")  # type: ignore[list-item]
    with pytest.raises(InputError, match="empty"):
        render_combined([ReportPart("a", [], COLUMNS)], title="t")


def test_combined_page_renders_in_headless_chromium(tmp_path, entries):
    _, dom, n_images = _probed(_required_chromium(), tmp_path, _combined(entries))
    assert dom.body.get("data-images") == str(n_images) == dom.body.get("data-loaded")
    # two leaderboards, each with its own defenses
    assert int(dom.body.get("data-tables", "0")) >= 4
