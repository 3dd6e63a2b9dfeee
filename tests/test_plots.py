"""Shot-scaling and per-group plots from fixture run folders: the drawn values are the leaderboard's
means and CIs, published points appear where they exist, and PNG and SVG files are written."""

import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from test_leaderboard import GROUPS, opinion_runs

import gpo_bench as gb
from gpo_bench import aggregate, plots
from gpo_bench.cli import main


def test_shot_curves_are_the_cell_means_with_ci_bands_and_published_points(tmp_path):
    tables = opinion_runs(tmp_path)
    fig, name, _ = plots.shots_figure(gb.load_runs(tmp_path), ["opinionqa", "globalopinionqa"])
    assert name == "shots-opinionqa+globalopinionqa"
    panel, other = fig.axes[:2]
    assert panel.get_title() == "opinionqa · 40% of groups meta-train" and other.get_title().startswith(
        "globalopinionqa"
    )
    lines = {line.get_label(): line for line in panel.get_lines()}
    assert set(lines) == {"population", "uniform"}
    for method, table in tables.items():
        x, y = lines[method].get_data()
        assert list(x) == [0, 5, 20]
        expected = [table.mean() - 0.02, table.mean() - 0.01, table.mean()]
        assert np.allclose(y, expected, atol=1e-12)
    uniform_runs = [r for r in gb.load_runs(tmp_path, "opinionqa") if r.method == "uniform"]
    cis = [aggregate.cell_stats(uniform_runs, k).ci for k in (0, 5, 20)]
    colour = to_rgb(lines["uniform"].get_color())
    band = next(c for c in panel.collections if tuple(c.get_facecolor()[0][:3]) == pytest.approx(colour))
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(min(lo for lo, _ in cis)) and ys.max() == pytest.approx(max(hi for _, hi in cis))
    published = {c.get_label(): c.get_offsets()[0].tolist() for c in panel.collections if "reported" in c.get_label()}
    assert published == {"uniform · Alpaca-7b, Llama2-13b-chat, reported by the paper [gpo-paper]": [20, 0.824]}
    assert fig.legends and fig.legends[0].get_bbox_to_anchor().x0 >= panel.get_window_extent().x1


def test_group_plot_shows_each_groups_mean_and_ci_over_runs(tmp_path):
    tables = opinion_runs(tmp_path)
    fig, name, _ = plots.groups_figure(gb.load_runs(tmp_path), "opinionqa")
    assert name == "groups-opinionqa-K20"
    ax = fig.axes[0]
    groups = [tick.get_text() for tick in ax.get_yticklabels()]
    assert sorted(groups) == GROUPS
    drawn = {}
    for container in ax.containers:
        x, y = container.lines[0].get_data()
        drawn[container.get_label()] = dict(zip([groups[round(v)] for v in y], x, strict=True))
    for method, table in tables.items():
        for j, group in enumerate(GROUPS):
            assert drawn[method][group] == pytest.approx(table[:, j].mean(), abs=1e-12)


def test_cli_writes_png_and_svg_and_names_a_missing_task(tmp_path, capsys):
    opinion_runs(tmp_path)
    assert main(["plot", "shots", "--task", "opinionqa,globalopinionqa", "--output-dir", str(tmp_path)]) == 0
    assert main(["plot", "groups", "--task", "opinionqa", "--shots", "5", "--output-dir", str(tmp_path)]) == 0
    for stem in ("shots-opinionqa+globalopinionqa", "groups-opinionqa-K5"):
        image = matplotlib.image.imread(tmp_path / "plots" / f"{stem}.png")
        assert image.ndim == 3 and image.shape[1] > 600
        svg = ET.parse(tmp_path / "plots" / f"{stem}.svg").getroot()
        assert svg.tag.endswith("svg")
    first = (tmp_path / "plots" / "shots-opinionqa+globalopinionqa.svg").read_bytes()
    assert main(["plot", "shots", "--task", "opinionqa,globalopinionqa", "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "shots-opinionqa+globalopinionqa.svg").read_bytes() == first  # same runs, same file
    assert main(["plot", "shots", "--task", "opinionqa,prism", "--output-dir", str(tmp_path)]) == 2
    assert "no finished runs of task(s) prism" in capsys.readouterr().err


def test_every_row_of_a_full_board_has_its_own_look_and_language_model_rows_are_dashed():
    core = ["gpo", "meta-mix", "meta-mix [meta_train=False]", "meta-mix [text_residual=False]", "uniform"]
    core += ["population", "group-knn", "group-mix", "head", "knn"]
    lm = [f"{m} [model=smollm2]" for m in ("lm-base", "lm-steered", "lm-steered-bio", "lm-steered-qa", "few-shot")]
    lm += [f"{m} [model=smollm2]" for m in ("sft", "in-context-finetune", "reward-model", "lm-steered-qa-x")]
    style = plots._style(sorted(core + lm))
    looks = {(s["color"], s["marker"], s["linestyle"]) for s in style.values()}
    assert len(looks) == len(core) + len(lm)
    assert {style[row]["linestyle"] for row in lm} == {"--"} and {style[row]["linestyle"] for row in core} == {"-"}
    assert {style[row]["markerfacecolor"] for row in lm} == {"white"}
    assert all(style[row]["markerfacecolor"] == style[row]["color"] for row in core)
    assert not {style[row]["color"] for row in lm} & {style[row]["color"] for row in core}
    # within a family, the two rows that share a colour differ in marker
    same_colour = [row for row in core if style[row]["color"] == style[core[0]]["color"]]
    assert len(same_colour) == 2 and len({style[row]["marker"] for row in same_colour}) == 2


@pytest.mark.parametrize("rows", [5, 40])
def test_the_legend_stays_within_the_figures_height_however_many_rows(rows):
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row in range(rows):
        ax.plot([0, 1], [row, row], label=f"a fairly long row label number {row} [model=smollm2]")
    plots._legend_outside(fig, [ax])
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert legend.height <= fig.bbox.height
