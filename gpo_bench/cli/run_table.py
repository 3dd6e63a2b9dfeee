"""What `gpo-bench run` prints about a finished run: per K, its headline with the CI, where it stands between
the floor and the sampling ceiling, and how many predictions fell back to a less informed guess."""

from __future__ import annotations

FALLBACK_NOTICE = 0.05  # print a cell's fallback share when more of its predictions than this fell back


def print_table(result: dict) -> None:
    """The headline per K with its CI and item-pooled mean, where it stands between the floor (uniform) and the
    sampling ceiling, and how many predictions fell back to a less informed guess."""
    metric = result["metric"]
    spec = result["spec"]
    print(
        f"\n{spec['task']} / {spec['method']}  encoder={spec['encoder']}  train_frac={spec['train_frac']}  "
        f"seeds={spec['seeds']}  test groups={len(result['split']['test'])}"
    )
    subsets = [name for name in ("seen", "unseen") if any(name in c for c in result["metrics"].values())]
    print(
        f"{'K':>4}  {metric:>13}  {'95% CI':>17}  {'pooled':>7}"
        + "".join(f"  {name:>7}" for name in subsets)
        + f"  {'uniform':>7}  {'ceiling':>7}  {'headroom':>8}  {'items':>7}"
    )
    notes = []
    for shots, cell in sorted(result["metrics"].items(), key=lambda kv: int(kv[0])):
        s = cell[metric]
        pooled = cell[metric].get("pooled", s["mean"])
        extra = "".join(f"  {cell[name][metric]['mean']:7.4f}" if name in cell else f"  {'-':>7}" for name in subsets)
        items = cell.get("user_accuracy", s)["n_items"]
        reference = cell.get("reference", {})
        ceiling, headroom = reference.get("ceiling"), reference.get("headroom")
        print(
            f"{shots:>4}  {s['mean']:13.4f}  [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]  {pooled:7.4f}{extra}"
            f"  {reference.get('uniform', float('nan')):7.4f}  {'n/a' if ceiling is None else f'{ceiling:.4f}':>7}"
            f"  {'n/a' if headroom is None else f'{headroom:.0%}':>8}  {items:7d}"
        )
        fallbacks = cell.get("fallbacks", {})
        if fallbacks.get("share", 0) > FALLBACK_NOTICE or fallbacks.get("ties_broken", 0) > FALLBACK_NOTICE * items:
            kinds = {k: v for k, v in fallbacks.items() if k not in ("predictions", "share", "ties_share")}
            notes.append(f"K={shots}: {fallbacks['share']:.0%} of predictions fell back ({kinds})")
    if reference.get("ceiling") is None and reference.get("ceiling_note"):
        print(f"ceiling: {reference['ceiling_note']}")
    if reference.get("floor") == "majority":
        print(
            f"uniform: chance on the same targets; the floor is majority (the seen groups' most common answer "
            f"position): {reference['majority']:.4f} at K={shots}; headroom: (score − majority) / (1 − majority)"
        )
    else:
        print(
            "uniform: the floor on the same targets; ceiling: the groups' own distributions scored against a survey "
            "of their size; headroom: (score − uniform) / (ceiling − uniform)"
        )
    for note in notes:
        print(f"fallbacks: {note}")
    print(f"run folder: {result['run_folder']}")
