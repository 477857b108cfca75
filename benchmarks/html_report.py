"""Floor: the quickstart's ``report.html`` opens and renders in headless Chromium with no console
messages, self-contained (nothing fetched).

Renders ``report.html`` from a quickstart run's ``report.json`` (``--run``, default
``runs/quickstart``; the run folder is not written to) with ``nas.html_report``, loads it in
``/usr/bin/chromium --headless`` several times and records the console lines, the page's size and
the wall time to a screenshot. Results: ``benchmarks/results/html_report.{json,md}`` and the
screenshot ``benchmarks/results/html_report.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = Path("/usr/bin/chromium")
REPEATS = 3


def _load(url: str, shot: Path) -> tuple[float, list[str], int]:
    with tempfile.TemporaryDirectory() as profile:
        t0 = time.perf_counter()
        proc = subprocess.run(
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
                "--window-size=1280,1800",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.perf_counter() - t0
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return seconds, console, proc.returncode


def main(argv: list[str] | None = None) -> int:
    from latency_models.table import write_atomic
    from nas.html_report import render_html_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "quickstart"), help="a quickstart run folder")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "report.json").is_file():
        print(f"--run: {run}/report.json not found; run `make run` first.", file=sys.stderr)
        return 2
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found (apt-get install chromium).", file=sys.stderr)
        return 2
    report = json.loads((run / "report.json").read_text())
    results_dir = ROOT / "benchmarks" / "results"
    with tempfile.TemporaryDirectory(prefix="bench-html-") as tmp:
        folder = Path(tmp)
        for name in ("model.tflite", "compress_report.json"):
            if (run / name).is_file():
                shutil.copy(run / name, folder / name)
        t0 = time.perf_counter()
        page = render_html_report(report, folder)
        render_s = time.perf_counter() - t0
        (folder / "report.html").write_text(page)
        external = sorted(set(re.findall(r'(?:src|href)="(?!data:|#)([^"]+)"', page)))
        loads = [_load((folder / "report.html").as_uri(), folder / f"shot{i}.png") for i in range(REPEATS)]
        results_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "shot0.png", results_dir / "html_report.png")
        png_bytes = (folder / "shot0.png").stat().st_size
    console = sorted({line for _, lines, _ in loads for line in lines})
    doc = {
        "benchmark": "html_report",
        "run": str(run),
        "config": report.get("config", {}).get("task"),
        "trials": len(report.get("trials", [])),
        "html_bytes": len(page.encode()),
        "render_s": render_s,
        "external_references": external,
        "chromium": subprocess.run(
            [str(CHROMIUM), "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "loads": REPEATS,
        "exit_codes": sorted({code for _, _, code in loads}),
        "console_lines": console,
        "load_to_screenshot_median_s": statistics.median(s for s, _, _ in loads),
        "screenshot_bytes": png_bytes,
        "meets_floor": not console and not external and all(code == 0 for _, _, code in loads),
    }
    write_atomic(results_dir / "html_report.json", json.dumps(doc, indent=1) + "\n")
    md = [
        f"# report.html of {run.name} in headless Chromium",
        "",
        f"{doc['chromium']}; {REPEATS} loads; page {doc['html_bytes'] / 1024:.1f} KB for {doc['trials']} trials.",
        "",
        "| check | value |",
        "|---|---|",
        f"| console messages | {len(console)} |",
        f"| external references (src/href) | {len(external)} |",
        f"| Chromium exit codes | {doc['exit_codes']} |",
        f"| render report.html (Python) | {render_s * 1000:.1f} ms |",
        f"| Chromium start to screenshot, median | {doc['load_to_screenshot_median_s']:.2f} s |",
        f"| meets floor (no console errors, self-contained) | {'yes' if doc['meets_floor'] else 'NO'} |",
    ]
    write_atomic(results_dir / "html_report.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if doc["meets_floor"] else 1


if __name__ == "__main__":
    sys.exit(main())
