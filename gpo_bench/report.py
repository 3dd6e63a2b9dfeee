"""`gpo-bench report`: a self-contained static web site built from the run folders alone
(`<output>/runs/*/{result.json,predictions.jsonl,items.jsonl}`), written to `<output>/report/`.

The site is one page (`index.html`, `app.js`, `style.css`, shipped in `gpo_bench/report_assets/`; no network,
no CDN) that loads its data lazily from small JavaScript files under `data/` (JSONP-style, so it works over
`file://` as well as over HTTP): `index.js` (the tasks), one file per task (the board of every method × K ×
train fraction × subset: the leaderboard's own cells and paired differences, `board.column_cells` and
`board.column_differences` at every K, the group × method tables, the runs), the items' texts per task, one
file per run (its result.json) and its predictions, one file per (K, seed). Plots are the `gpo-bench plot`
figures, as SVG.
A run's files are rewritten only when its run folder changed, so the report of thousands of runs is quick to
refresh."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

from .aggregate import Bounds, Comparison, coverage_parts, group_stats
from .board import column_cells, column_differences, column_order, group_cells
from .errors import DataError
from .files import write_atomic
from .metrics import item_score
from .records import OVERALL, RunRecord, group_metric

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "report_assets"
DIGITS = 4  # predictions and targets are rounded to this many decimals in the report


def slug(name: str) -> str:
    """A file-name-safe version of a task or run name (with a hash where characters had to be replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _payload(key: str, data: object) -> str:
    """A data file: a call that hands `data` to the page (works over file:// where fetch() does not); it is
    JavaScript, not JSON, so NaN and Infinity stay what they are."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f"GPO_REPORT.receive({json.dumps(key)},{text});\n"


def _write(dest: Path, relative: str, data: object) -> str:
    write_atomic(dest / relative, _payload(relative, data), sync=False)
    return relative


def _stats(stats) -> dict:
    """A CellStats as JSON: mean, CI, counts and any further number the leaderboard adds (headroom, …)."""
    out = {}
    for key, value in dataclasses.asdict(stats).items():
        if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, float | int) for v in value):
            out[key] = [round(float(v), 6) for v in value]
        elif isinstance(value, float | int) and not isinstance(value, bool):
            out[key] = round(float(value), 6) if isinstance(value, float) else value
    return out


def task_board(runs: list[RunRecord]) -> tuple[list[dict], list[dict]]:
    """Board rows (row × train fraction × subset × K: the leaderboard's cell and paired difference to the
    column's strongest simple baseline at every K) and the group × method tables (one per train fraction × K,
    overall)."""
    board = []
    for column, by_row in sorted(group_cells(runs).items(), key=lambda item: column_order(item[0])):
        for shots in sorted(set().union(*(r.shots(column.subset) for rs in by_row.values() for r in rs))):
            bounds, cells, _ = column_cells(by_row, column, shots)
            against, differences, _ = column_differences(by_row, column, shots, cells, None, sorted(by_row))
            for row, stats in cells.items():
                used = [
                    r.folder.name
                    for r in sorted(by_row[row], key=lambda r: r.seeds)
                    if (shots, column.subset) in r.per_group
                ]
                entry = {
                    "method": row,
                    "train_frac": column.train_frac,
                    "subset": column.subset,
                    "shots": shots,
                    **_stats(stats),
                    "runs": used,
                }
                if (comparison := differences.get(row)) is not None:
                    diff = comparison.difference
                    entry["minus_best_baseline"] = round(diff.mean, 6)
                    entry["paired_ci"] = [round(diff.ci[0], 6), round(diff.ci[1], 6)]
                    entry["best_baseline"] = against
                overall = by_row[row] if column.subset == OVERALL else []  # the coverage split is of all test groups
                entry.update(floor_and_coverage(bounds, stats.mean, overall, shots, differences.get(row)))
                board.append(entry)
    board.sort(key=lambda e: (e["method"], e["train_frac"], e["subset"], e["shots"]))
    tables = []
    for frac in sorted({r.train_frac for r in runs}):
        frac_runs = [r for r in runs if math.isclose(r.train_frac, frac)]
        for shots in sorted(set().union(*(r.shots() for r in frac_runs))):
            values = {}
            for row in sorted({r.row for r in frac_runs}):
                per_group = group_stats([r for r in frac_runs if r.row == row], shots)
                if per_group:
                    values[row] = {g: [round(s.mean, 6), *(round(c, 6) for c in s.ci)] for g, s in per_group.items()}
            if values:
                tables.append({"train_frac": frac, "shots": shots, "values": values})
    return board, tables


def floor_and_coverage(
    bounds: Bounds | None, mean: float, runs: list[RunRecord], shots: int, comparison: Comparison | None
) -> dict:
    """A board row's majority floor (accuracy tasks) with a `below_floor` mark, and its coverage split (share and
    score per part, and the paired difference to the best baseline by part), as the leaderboard shows them."""
    out: dict = {}
    if bounds is not None and bounds.majority is not None:
        out["majority_floor"] = round(bounds.majority, 6)
        out["below_floor"] = "▼ below" if bounds.below(mean) else ""
    for part, values in (coverage_parts(runs, shots) or {}).items():
        out[f"{part}_share"] = round(values.share, 6)
        out[part] = None if values.mean is None else round(values.mean, 6)
    for part, diff in (comparison.parts if comparison is not None else {}).items():
        out[f"{part}_minus_best_baseline"] = round(diff.mean, 6)
        out[f"{part}_paired_ci"] = [round(diff.ci[0], 6), round(diff.ci[1], 6)]
    return out


def task_plots(dest: Path, task: str, runs: list[RunRecord]) -> list[dict]:
    """The shot-scaling and per-group figures of `gpo-bench plot`, one of each per train fraction, as SVG."""
    from .plots import groups_figure, shots_figure

    out = []
    for frac in sorted({r.train_frac for r in runs}):
        for kind, (fig, _, _) in (
            ("shot scaling", shots_figure(runs, [task], frac)),
            ("per group", groups_figure(runs, task, None, frac)),
        ):
            relative = f"plots/{slug(task)}-{kind.replace(' ', '-')}-train{frac}.svg"
            (dest / "plots").mkdir(parents=True, exist_ok=True)
            fig.savefig(dest / relative, bbox_inches="tight", metadata={"Date": None})
            out.append({"kind": kind, "train_frac": frac, "file": relative})
    return out


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read it ({error})") from None


def run_files(dest: Path, run: RunRecord) -> dict:
    """The run's data file (its result.json and the list of its prediction pages) and one predictions page
    per (K, seed); skipped when they are newer than the run folder's files."""
    name = slug(run.folder.name)
    relative = f"data/runs/{name}.js"
    sources = [run.folder / f for f in ("result.json", "predictions.jsonl") if (run.folder / f).exists()]
    target = dest / relative
    if target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return {"id": run.folder.name, "file": relative}
    result = run.result()
    metric = "alignment" if run.metric == "alignment" else "accuracy"
    pages: dict[tuple[int, int], list] = defaultdict(list)
    predictions = run.folder / "predictions.jsonl"
    for row in _read_jsonl(predictions) if predictions.exists() else []:
        score = row.get("score")  # runs written before predictions.jsonl kept it: computed here
        if score is None:
            score = item_score(metric, row["pred"], row["target"], row.get("ordinal"), f"{predictions} {row['item']}")
        pages[(row["shots"], row["seed"])].append(
            [
                row["group"],
                row["item"],
                row.get("split"),
                [round(p, DIGITS) for p in row["pred"]],
                [round(t, DIGITS) for t in row["target"]],
                round(score, DIGITS),
            ]
        )
    listing = []
    for (shots, seed), rows in sorted(pages.items()):
        page = _write(dest, f"data/predictions/{name}/K{shots}-seed{seed}.js", rows)
        listing.append({"shots": shots, "seed": seed, "file": page, "n": len(rows)})
    _write(dest, relative, {"result": result, "pages": listing})
    return {"id": run.folder.name, "file": relative}


def task_items(runs: list[RunRecord]) -> dict[str, list]:
    """Item id → [prompt, candidates] from the runs' items.jsonl (runs written before it existed have none)."""
    items: dict[str, list] = {}
    for run in runs:
        path = run.folder / "items.jsonl"
        if path.exists():
            for row in _read_jsonl(path):
                items.setdefault(row["item"], [row["prompt"], row["candidates"]])
    return items


def _task_card(task: str) -> dict:
    from .cards import load_task_card
    from .errors import UnknownNameError

    try:
        card = load_task_card(task)
    except (UnknownNameError, ValueError):  # runs of a task whose card is not installed here
        return {"description": "", "reference": None}
    return {"description": card.description, "reference": card.reference}


def write_report(runs: list[RunRecord], output_dir: Path, dest: Path | None = None, notes: list[str] = ()) -> Path:
    """Write the site for the runs of `output_dir/runs/` into `dest` (default `output_dir/report`); `notes` (the
    folders skipped) are shown on its index page. Return index.html."""
    notes = list(notes)
    if not runs:
        raise DataError(f"no finished runs under {output_dir / 'runs'}; run `gpo-bench run` or `sweep` first")
    dest = dest or output_dir / "report"
    dest.mkdir(parents=True, exist_ok=True)
    for asset in ASSETS.iterdir():
        shutil.copyfile(asset, dest / asset.name)
    tasks = []
    for task in sorted({r.task for r in runs}):
        task_runs = [r for r in runs if r.task == task]
        board, tables = task_board(task_runs)
        listing = [
            {
                "method": r.row,
                "train_frac": r.train_frac,
                "seeds": list(r.seeds),
                "encoder": r.encoder,
                **run_files(dest, r),
            }
            for r in task_runs
        ]
        data = {
            "task": task,
            **_task_card(task),
            "metric": task_runs[0].metric,
            "group_metric": group_metric(task_runs[0].metric),
            "overall": OVERALL,
            "board": board,
            "group_tables": tables,
            "plots": task_plots(dest, task, task_runs),
            "runs": listing,
            "items": _write(dest, f"data/items/{slug(task)}.js", task_items(task_runs)),
        }
        tasks.append(
            {
                "task": task,
                "description": data["description"],
                "metric": data["metric"],
                "runs": len(task_runs),
                "methods": sorted({r.row for r in task_runs}),
                "file": _write(dest, f"data/tasks/{slug(task)}.js", data),
            }
        )
    _write(dest, "data/index.js", {"output_dir": str(output_dir), "tasks": tasks, "notes": notes})
    return dest / "index.html"


def serve(folder: Path, port: int) -> None:
    """Serve the report folder over HTTP on localhost until interrupted."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
