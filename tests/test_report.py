"""`gpo-bench report`: the site's data against independent computations, incremental refresh, and the site
itself in headless Chromium (over file:// and --serve): no console errors, the board sorts on a header click,
a run page's predictions and validation curve render, a screenshot is not blank."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from test_leaderboard import opinion_runs, write_run

import gpo_bench as gb
from gpo_bench.cli import main
from gpo_bench.discovery import INCLUDE_ENV

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def build(root, tasks=None, encoder=None, shots=None, versus=None):
    """The board `gpo-bench leaderboard` writes for `root`, through the Python API."""
    return gb.leaderboard(gb.load_runs(root, task=tasks, encoder=encoder), shots, versus)


def data_file(site: Path, relative: str) -> object:
    """The data of one report data file, `GPO_REPORT.receive("<its path>", data);`."""
    match = re.fullmatch(r'GPO_REPORT\.receive\("([^"]+)",(.*)\);\n', (site / relative).read_text(), re.S)
    assert match and match.group(1) == relative
    return json.loads(match.group(2))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A few quick runs: synthetic with three baselines and a short GPO (validation curve), and the example
    survey from the include folder."""
    out = tmp_path_factory.mktemp("report-results")
    common = ["--seeds", "0,1", "--shots", "0,5", "--limit-items", "40", "--output-dir", str(out)]
    for method in ("uniform", "population", "group-knn"):
        assert main(["run", "--task", "synthetic", "--method", method, *common]) == 0
    gpo = ["--encoder", "bow", "--set", "max_steps=12", "--set", "eval_every=4", "--set", "patience=null"]
    assert main(["run", "--task", "synthetic", "--method", "gpo", *gpo, *common]) == 0
    mp = pytest.MonkeyPatch()
    mp.setenv(INCLUDE_ENV, "")
    try:
        assert (
            main(["run", "--task", "example_survey", "--method", "uniform", "--include-path", str(EXAMPLES), *common])
            == 0
        )
        assert main(["report", "--output-dir", str(out), "--include-path", str(EXAMPLES)]) == 0
    finally:
        mp.undo()
    return out


def test_board_matches_the_leaderboard_and_predictions_are_rescored_independently(results):
    site = results / "report"
    index = data_file(site, "data/index.js")
    assert [t["task"] for t in index["tasks"]] == ["example_survey", "synthetic"]
    task = data_file(site, index["tasks"][1]["file"])
    board = build(results, ["synthetic"], shots=5)
    for (row, column), stats in board.cells.items():
        shown = [r for r in task["board"] if r["method"] == row and r["shots"] == 5 and r["subset"] == column.subset]
        assert len(shown) == 1 and shown[0]["mean"] == pytest.approx(stats.mean, abs=1e-6)
        assert (
            shown[0]["ci"] == pytest.approx(list(stats.ci), abs=1e-6) and shown[0]["n"] == stats.n == 2
        )  # one run of two seeds
    run = next(r for r in task["runs"] if "--population--" in r["id"])
    pages = data_file(site, run["file"])["pages"]
    assert sorted((p["shots"], p["seed"]) for p in pages) == [(0, 0), (0, 1), (5, 0), (5, 1)]
    folder = results / "runs" / run["id"]
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").open()]
    shown = [r for p in pages for r in data_file(site, p["file"])]
    assert len(shown) == len(rows)
    by_key = {(r["group"], r["item"], r["shots"], r["seed"]): r for r in rows}
    for page in pages:
        for group, item, _, pred, _, score in data_file(site, page["file"]):
            row = by_key[(group, item, page["shots"], page["seed"])]
            assert score == pytest.approx(1 - jensenshannon(row["pred"], row["target"]), abs=1e-4)
            np.testing.assert_allclose(pred, row["pred"], atol=1e-4)
    items = data_file(site, task["items"])
    texts = {json.loads(line)["item"]: json.loads(line) for line in (folder / "items.jsonl").open()}
    assert {r["item"] for r in rows} <= set(items) and all(
        items[i] == [t["prompt"], t["candidates"]] for i, t in texts.items()
    )


def pooled_runs(root: Path) -> None:
    """Two seeds of gpo and head on prism_personalized (pooled accuracy, seen and unseen users), K = 20."""

    def block(pooled: float, users: dict[str, float]) -> dict:
        return {"user_accuracy": {"per_group": users, "n_items": 40}, "accuracy": {"mean": pooled, "ci": [0, 1]}}

    for method, shift in (("gpo", 0.1), ("head", 0.0)):
        for seed in (0, 1):
            users = {"u1": 0.5 + shift + 0.05 * seed, "u2": 0.6 + shift, "u3": 0.7 - 0.1 * seed}
            cell = {
                **block(0.55 + shift + 0.025 * seed, users),
                "seen": block(0.6 + shift, {"u1": users["u1"], "u2": users["u2"]}),
                "unseen": block(0.5, {"u3": users["u3"]}),
                "capped_shots": {},
            }
            folder = write_run(root, f"p--{method}--{seed}", "prism_personalized", method, seed, {}, metric="accuracy")
            result = json.loads((folder / "result.json").read_text())
            result["metrics"] = {"20": cell}
            (folder / "result.json").write_text(json.dumps(result))


def test_the_report_board_is_the_leaderboard_at_every_k_pooled_accuracy_included(tmp_path):
    opinion_runs(tmp_path)
    pooled_runs(tmp_path)
    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    site = tmp_path / "report"
    tasks = {t["task"]: data_file(site, t["file"]) for t in data_file(site, "data/index.js")["tasks"]}
    assert sorted(tasks) == ["globalopinionqa", "opinionqa", "prism_personalized"]
    checked = paired = 0
    for name, task in tasks.items():
        for shots in sorted({e["shots"] for e in task["board"]}):
            board = build(tmp_path, [name], shots=shots)
            shown = {(e["method"], e["subset"]): e for e in task["board"] if e["shots"] == shots}
            assert set(shown) == {(row, column.subset) for row, column in board.cells}
            for (row, column), stats in board.cells.items():
                entry = shown[(row, column.subset)]
                assert entry["mean"] == round(stats.mean, 6) and entry["ci"] == [round(c, 6) for c in stats.ci]
                assert entry["n"] == stats.n and entry.get("headroom") == (
                    None if stats.headroom is None else round(stats.headroom, 6)
                )
                diff = board.differences.get((row, column))
                assert ("minus_best_baseline" in entry) == (diff is not None)
                if diff is not None:
                    assert entry["minus_best_baseline"] == round(diff.mean, 6)
                    assert entry["best_baseline"] == board.versus[column]
                    paired += 1
                checked += 1
    assert checked == 3 * 2 + 1 + 2 * 3 and paired == 3  # opinionqa K = 0, 5, 20; globalopinionqa; prism's 3 subsets
    assert not any("minus_best_baseline" in e for e in tasks["prism_personalized"]["board"])  # pooled: no pairing


def test_refreshing_rewrites_only_changed_runs(results, tmp_path):
    site = results / "report"
    files = sorted((site / "data" / "runs").glob("*.js"))
    before = {f: f.stat().st_mtime_ns for f in files}
    time.sleep(0.05)
    result = next((results / "runs").glob("synthetic--uniform--*/result.json"))
    result.touch()
    assert main(["report", "--output-dir", str(results), "--report-dir", str(site)]) == 0
    changed = [f.name.split("--")[1] for f in files if f.stat().st_mtime_ns != before[f]]
    assert changed == ["uniform"]


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--output-dir", str(tmp_path)]) == 2
    assert f"no finished runs under {tmp_path / 'runs'}" in capsys.readouterr().err


# ---- in a real browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    flags += "--disable-component-update --disable-sync --window-size=1400,1000"
    for flag in flags.split():
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="gpo-bench-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url: str) -> None:
    """Load `url` and wait until the page says it is ready; fail on any console error."""
    driver.get(url)
    for _ in range(300):
        ready = driver.execute_script("return document.body.dataset.ready || null")
        if ready:
            break
        time.sleep(0.05)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert ready and ready != "error" and not errors, (ready, errors, driver.find_element("id", "app").text[:300])


def column_values(driver, index: int) -> list[str]:
    """The texts of one column of the page's first sortable table (the board on a task page)."""
    table = driver.find_elements("css selector", "table.sortable-table")[0]
    return [td.text for td in table.find_elements("css selector", f"tbody tr td:nth-child({index})")]


def test_report_in_chromium_over_file_url(results, browser, tmp_path):
    base = (results / "report" / "index.html").as_uri()
    open_page(browser, base)
    assert {a.text for a in browser.find_elements("css selector", "#app a")} == {"example_survey", "synthetic"}

    open_page(browser, base + "#/task/synthetic")
    headers = browser.find_elements("css selector", "table.sortable-table")[0].find_elements("css selector", "th")
    names = [h.text for h in headers]
    score = names.index("alignment") + 1
    first = [float(v) for v in column_values(browser, score)]
    headers[score - 1].click()
    descending = [float(v) for v in column_values(browser, score)]
    assert descending == sorted(first, reverse=True) and descending != first
    headers[score - 1].click()
    assert [float(v) for v in column_values(browser, score)] == sorted(first)
    assert "sorted-asc" in headers[score - 1].get_attribute("class")
    assert len(browser.find_elements("css selector", ".plots img")) == 2
    assert all(
        browser.execute_script("return arguments[0].naturalWidth", img) > 0
        for img in browser.find_elements("css selector", ".plots img")
    )

    gpo = browser.find_element("css selector", "a[href*='synthetic--gpo--']")
    gpo.click()
    open_page(browser, browser.current_url)
    items = browser.find_elements("css selector", ".predictions .item")
    assert len(items) == 20  # the first page of the K=0, seed 0 predictions
    assert items[0].find_elements("css selector", ".bar.target") and items[0].find_elements("css selector", ".bar.pred")
    assert "score" in items[0].text and "(the run folder has no items.jsonl" not in items[0].text
    assert len(browser.find_elements("css selector", "svg.curve polyline")) == 2  # one validation curve per seed
    shot = tmp_path / "run.png"
    browser.save_screenshot(str(shot))
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_report_in_chromium_over_serve(results, browser):
    server = subprocess.Popen(
        [sys.executable, "-m", "gpo_bench", "report", "--output-dir", str(results), "--serve", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in server.stdout:
            if match := re.search(r"(http://127\.0\.0\.1:\d+/)", line):
                url = match.group(1)
                break
        assert url, "the server did not say where it listens"
        open_page(browser, url + "#/task/example_survey")
        assert set(column_values(browser, 1)) == {"uniform [limit_items=40]"}  # one method at K = 0 and 5
        assert column_values(browser, 3) == ["0", "5"]
    finally:
        server.terminate()
        server.wait(timeout=30)
