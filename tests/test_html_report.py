"""``report.html``: written beside report.json by every run, self-contained (no scripts, nothing
fetched), with the charts, the trials, compression stages, exports and versions; rendered in
headless Chromium with no console errors (skipped, with the reason, where Chromium is absent)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nas.html_report import render_html_report, write_html_report
from tests.test_retrieve import build_table_runs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_table_runs(tmp_path_factory.getbasetemp() / "edge-nas-table-runs") / "board-a"


class _Page(HTMLParser):
    """Tags, attributes and the text of each table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._row: list[str] | None = None
        self._row_class = ""
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row, self._row_class = [], dict(attrs).get("class") or ""
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row_class, self._row))
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._row:
            self._row[-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_every_run_writes_a_self_contained_report(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    text = (run_dir / "report.html").read_text()
    page = _parse(text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "iframe" not in tags
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, key, value)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert tags.count("svg") == 2

    # one row per trial, the winner marked, the reasons screened-out trials were refused
    trial_rows = [(c, r) for c, r in page.rows if len(r) == 11]
    assert [int(r[0]) for _, r in trial_rows] == [t["number"] for t in report["trials"]]
    winner = [r for c, r in trial_rows if "winner" in c.split()]
    assert len(winner) == 1 and int(winner[0][0]) == report["best"]["trial"]
    for (_, cells), trial in zip(trial_rows, report["trials"], strict=True):
        assert cells[1] == trial["state"]
        if trial["state"] == "infeasible":
            assert "size_kb +" in cells[2] and "over" in cells[2]

    body = " ".join(page.text)
    assert "size budget 60 KB" in body  # the budget line on the size chart
    assert "board-a" in body and "digits" in body
    # board-a is another device: its latency cannot be measured here and is not made up
    assert (
        report["best"]["measured_latency_ms"] is None
        and "latency_measured" not in report["best"]["meets_budgets"]
    )
    assert report["best"]["file"] in body and f"{report['best']['predicted_latency_ms']:.4g}" in body
    kv_rows = [r for _, r in page.rows if len(r) == 1]
    for version in report["versions"].values():
        assert [version] in kv_rows


def test_compression_stages_and_exports(run_dir: Path, tmp_path: Path) -> None:
    from compress.pipeline import CompressReport, ReportRow

    report = json.loads((run_dir / "report.json").read_text())
    # the run's own compression report (nas run exports through the pipeline) is rendered
    real = report.get("compression")
    if real:
        page = _parse(render_html_report(report, run_dir))
        stages = [r[0] for _, r in page.rows if len(r) == 13]
        assert stages == [row["stage"] for row in real["rows"]]
    # a compress_report.json in the folder is used when the report has none
    report.pop("compression", None)
    rows = (
        ReportRow("original", "int8", 0.91, 0.0, 20480, 15000, 0.0, 120000, 0.012, 9000, 1.5),
        ReportRow(
            "prune:0.5",
            "int8",
            0.80,
            11.0,
            20480,
            9000,
            0.5,
            120000,
            0.011,
            9000,
            4.2,
            kept=False,
            notes=("accuracy drop 11.00 > 2 points: stage undone",),
        ),
    )
    (tmp_path / "compress_report.json").write_text(CompressReport(rows, ()).to_json())
    shutil.copy(run_dir / "model.tflite", tmp_path / "model.tflite")
    page = _parse(render_html_report(report, tmp_path))
    stage_rows = [r for _, r in page.rows if len(r) == 13]
    assert [r[0] for r in stage_rows] == ["original", "prune:0.5"]
    assert stage_rows[1][11] == "undone" and "stage undone" in stage_rows[1][12]
    assert stage_rows[1][3] == "-11.00 pts"
    # without one, the page says no stages ran
    assert "No compression stages" in render_html_report(report, run_dir)


def test_user_text_is_escaped(run_dir: Path, tmp_path: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    report["trials"][0]["arch"] = "<script>alert(1)</script>"
    report["task"]["name"] = "a&b"
    path = write_html_report(tmp_path, report)
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "a&amp;b" in text


def _chromium(url: str, screenshot: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1280,1600",
                f"--screenshot={screenshot}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def _console_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (apt-get install chromium)"
)
def test_renders_in_headless_chromium_without_console_errors(run_dir: Path, tmp_path: Path) -> None:
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    shot = out / "report.png"
    shot.unlink(missing_ok=True)
    proc = _chromium((run_dir / "report.html").resolve().as_uri(), shot)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc) == []
    png = shot.read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 20_000  # a rendered page, not a blank one

    # the check itself catches a page that logs an error
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('broken page')</script></body></html>")
    caught = _chromium(bad.as_uri(), tmp_path / "bad.png")
    assert any("broken page" in line for line in _console_lines(caught))
