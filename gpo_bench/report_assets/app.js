// gpo-bench report: a single page that loads its data files (data/*.js) lazily; no network, no libraries.
"use strict";
(function () {
  const cache = {};
  const waiting = {};
  window.GPO_REPORT = {
    receive(key, data) {
      cache[key] = data;
      (waiting[key] || []).forEach((w) => w.resolve(data));
      delete waiting[key];
    },
  };

  // A data file is a script calling GPO_REPORT.receive(name, data): it loads over file:// and http alike.
  function load(file) {
    if (file in cache) return Promise.resolve(cache[file]);
    return new Promise((resolve, reject) => {
      const first = !(file in waiting);
      (waiting[file] = waiting[file] || []).push({ resolve, reject });
      if (!first) return;
      const script = document.createElement("script");
      script.src = file;
      script.onerror = () => {
        (waiting[file] || []).forEach((w) => w.reject(new Error("cannot load " + file)));
        delete waiting[file];
      };
      document.head.appendChild(script);
    });
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat(Infinity)) {
      if (child != null) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const f3 = (v) => (v == null || Number.isNaN(Number(v)) ? "" : Number(v).toFixed(3));
  const pct = (v) => Math.round(v * 100) + "%";
  const ci = (pair) => (Array.isArray(pair) ? "[" + f3(pair[0]) + ", " + f3(pair[1]) + "]" : "");
  const link = (hash, text) => el("a", { href: "#/" + hash.map(encodeURIComponent).join("/") }, text);

  function select(label, options, onchange, value) {
    const node = el("select", { "aria-label": label, onchange: () => onchange(node.value) });
    for (const [v, text] of options) node.append(el("option", { value: v }, text));
    if (value != null) node.value = value;
    return el("label", {}, label + " ", node);
  }

  // A table sorted by clicking a header (again: the other way), showing at most `limit` rows.
  function sortableTable(columns, limit) {
    let rows = [];
    let sort = null;
    const head = el("tr", {});
    const body = el("tbody", {});
    const note = el("p", { class: "note" });
    const table = el("table", { class: "sortable-table" }, el("thead", {}, head), body);
    for (const column of columns) {
      const th = el("th", { class: "sortable", "data-key": column.key }, column.label);
      th.addEventListener("click", () => {
        const same = sort && sort.key === column.key;
        sort = { key: column.key, dir: same ? (sort.dir === "asc" ? "desc" : "asc") : column.num ? "desc" : "asc" };
        head.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        th.classList.add("sorted-" + sort.dir);
        render();
      });
      head.append(th);
    }
    function value(row, column) {
      return column.value ? column.value(row) : row[column.key];
    }
    function render() {
      let shown = rows.slice();
      if (sort) {
        const column = columns.find((c) => c.key === sort.key);
        const sign = sort.dir === "asc" ? 1 : -1;
        shown.sort((a, b) => {
          const x = value(a, column);
          const y = value(b, column);
          if (x == null) return 1;
          if (y == null) return -1;
          return sign * (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
        });
      }
      body.replaceChildren(
        ...shown.slice(0, limit).map((row) =>
          el(
            "tr",
            { class: row.below_floor ? "below-floor" : null },
            columns.map((c) => el("td", { class: c.num ? "num" : null }, c.render ? c.render(row) : value(row, c)))
          )
        )
      );
      note.textContent = shown.length > limit ? "showing " + limit + " of " + shown.length + " rows; filter to narrow" : shown.length + " rows";
    }
    return {
      node: el("div", {}, table, note),
      setRows(next) {
        rows = next;
        render();
      },
    };
  }

  function indexPage(app, index) {
    app.append(el("h1", {}, "Tasks"), el("p", { class: "note" }, "Runs read from " + index.output_dir));
    const table = sortableTable(
      [
        { key: "task", label: "task", render: (t) => link(["task", t.task], t.task) },
        { key: "description", label: "description" },
        { key: "metric", label: "headline metric" },
        { key: "runs", label: "runs", num: true },
        { key: "methods", label: "methods", value: (t) => t.methods.join(", ") },
      ],
      1000
    );
    table.setRows(index.tasks);
    app.append(table.node);
    if (index.notes.length) app.append(el("h2", {}, "Notes"), el("ul", {}, index.notes.map((n) => el("li", {}, n))));
  }

  const BOARD_KEYS = new Set(["method", "train_frac", "subset", "shots", "mean", "ci", "n", "seeds", "n_groups", "runs"]);

  function boardSection(app, data) {
    const extras = [...new Set(data.board.flatMap((r) => Object.keys(r).filter((k) => !BOARD_KEYS.has(k))))];
    const subsets = [...new Set(data.board.map((r) => r.subset))];
    const seedsOf = Object.fromEntries(data.runs.map((r) => [r.id, r.seeds]));
    const columns = [
      { key: "method", label: "method" },
      { key: "train_frac", label: "train", num: true, render: (r) => pct(r.train_frac) },
      ...(subsets.length > 1 ? [{ key: "subset", label: "users" }] : []),
      { key: "shots", label: "K", num: true },
      { key: "mean", label: data.metric, num: true, render: (r) => f3(r.mean) },
      { key: "ci", label: "95% CI", value: (r) => r.ci[0], num: true, render: (r) => ci(r.ci) },
      ...extras.map((k) => ({
        key: k,
        label: k.replace(/_/g, " "),
        num: true,
        value: (r) => (Array.isArray(r[k]) ? r[k][0] : r[k]),
        render: (r) => (Array.isArray(r[k]) ? ci(r[k]) : typeof r[k] === "number" ? f3(r[k]) : (r[k] ?? "")),
      })),
      { key: "n", label: "n seeds", num: true },
      { key: "n_groups", label: "groups", num: true },
      {
        key: "runs",
        label: "runs",
        value: (r) => r.runs.length,
        render: (r) => [
          r.runs.slice(0, 5).map((id) => [link(["run", data.task, id], "seed " + (seedsOf[id] || []).join(",")), " "]),
          r.runs.length > 5 ? "+" + (r.runs.length - 5) + " more (Runs, below)" : null,
        ],
      },
    ];
    const table = sortableTable(columns, 500);
    const state = { text: "", train: "", shots: "", subset: "" };
    const update = () =>
      table.setRows(
        data.board.filter(
          (r) =>
            r.method.toLowerCase().includes(state.text.toLowerCase()) &&
            (state.train === "" || String(r.train_frac) === state.train) &&
            (state.shots === "" || String(r.shots) === state.shots) &&
            (state.subset === "" || r.subset === state.subset)
        )
      );
    const all = (values, fmt) => [["", "all"], ...values.map((v) => [String(v), fmt ? fmt(v) : String(v)])];
    const unique = (key) => [...new Set(data.board.map((r) => r[key]))].sort((a, b) => a - b);
    const search = el("input", { type: "search", placeholder: "method contains…", "aria-label": "filter methods" });
    search.addEventListener("input", () => {
      state.text = search.value;
      update();
    });
    app.append(
      el("h2", {}, "Board"),
      el(
        "p",
        { class: "note" },
        "Each row: one method (with its settings) at one K and meta-train fraction; mean over runs (seeds) of the mean over test groups, its 95% percentile bootstrap CI resampling runs and groups (as gpo-bench leaderboard). Click a header to sort." +
          (data.board.some((r) => "majority_floor" in r)
            ? " Accuracy: majority floor = always the seen groups' most common answer on the same targets; headroom from it; rows below it are marked ▼ (in red)."
            : "") +
          (data.board.some((r) => "answered_share" in r)
            ? " answered / unanswered: the score on target items some seen group answered / none did, with each part's share of the predictions, and the paired difference to the best baseline by part."
            : "")
      ),
      el(
        "div",
        { class: "filters" },
        search,
        select("train", all(unique("train_frac"), pct), (v) => ((state.train = v), update())),
        select("K", all(unique("shots")), (v) => ((state.shots = v), update())),
        subsets.length > 1 ? select("users", all(subsets), (v) => ((state.subset = v), update())) : null
      ),
      table.node
    );
    update();
  }

  function groupSection(app, data) {
    if (!data.group_tables.length) return;
    const holder = el("div", {});
    const keys = data.group_tables.map((t, i) => [String(i), pct(t.train_frac) + " train, K=" + t.shots]);
    const preferred = data.group_tables.findIndex((t) => t.shots === 20);
    const show = (i) => {
      const t = data.group_tables[Number(i)];
      const methods = Object.keys(t.values);
      const groups = [...new Set(methods.flatMap((m) => Object.keys(t.values[m])))].sort();
      const table = sortableTable(
        [
          { key: "group", label: "group" },
          ...methods.map((m) => ({
            key: m,
            label: m,
            num: true,
            value: (r) => (r[m] ? r[m][0] : null),
            render: (r) => (r[m] ? el("span", { title: "95% CI " + ci(r[m].slice(1)) }, f3(r[m][0])) : ""),
          })),
        ],
        2000
      );
      table.setRows(groups.map((g) => Object.fromEntries([["group", g], ...methods.map((m) => [m, t.values[m][g]])])));
      holder.replaceChildren(table.node);
    };
    const start = String(preferred >= 0 ? preferred : 0);
    app.append(
      el("h2", {}, "Groups × methods (" + data.group_metric + ")"),
      el("p", { class: "note" }, "Mean over runs (seeds) of each test group's mean; hover a value for its CI over seeds."),
      el("div", { class: "filters" }, select("table", keys, show, start)),
      holder
    );
    show(start);
  }

  async function taskPage(app, index, name) {
    const entry = index.tasks.find((t) => t.task === name);
    if (!entry) throw new Error("no task " + name);
    const data = await load(entry.file);
    document.getElementById("crumbs").replaceChildren(" / ", link(["task", name], name));
    app.append(el("h1", {}, name), el("p", {}, data.description));
    if (data.reference) app.append(el("p", { class: "note" }, data.reference));
    boardSection(app, data);
    app.append(
      el("h2", {}, "Plots"),
      el(
        "div",
        { class: "plots" },
        data.plots.map((p) => el("figure", {}, el("img", { src: p.file, alt: p.kind }), el("figcaption", {}, p.kind + ", " + pct(p.train_frac) + " train")))
      )
    );
    groupSection(app, data);
    const runs = sortableTable(
      [
        { key: "id", label: "run", render: (r) => link(["run", name, r.id], r.id) },
        { key: "method", label: "method" },
        { key: "train_frac", label: "train", num: true, render: (r) => pct(r.train_frac) },
        { key: "seeds", label: "seeds", value: (r) => r.seeds.join(",") },
        { key: "encoder", label: "encoder" },
      ],
      500
    );
    runs.setRows(data.runs);
    app.append(el("h2", {}, "Runs"), runs.node);
  }

  function keyValues(object) {
    return el(
      "table",
      { class: "kv" },
      Object.entries(object || {}).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))))
    );
  }

  function curve(fit) {
    const series = Object.entries(fit || {}).filter(([, f]) => Array.isArray(f.history) && f.history.length);
    if (!series.length) return null;
    const W = 560, H = 240, L = 64, B = 36, T = 12, R = 12;
    const points = series.flatMap(([, f]) => f.history);
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[2]).filter(Number.isFinite);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (y0 === y1) [y0, y1] = [y0 - 0.01, y1 + 0.01];
    const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "curve");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text != null) node.textContent = text;
      svg.append(node);
    };
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
    add("text", { x: L, y: H - 18, "font-size": 11 }, String(x0));
    add("text", { x: W - R, y: H - 18, "font-size": 11, "text-anchor": "end" }, String(x1));
    add("text", { x: (W + L) / 2, y: H - 4, "font-size": 11, "text-anchor": "middle" }, "training step");
    const digits = Math.max(3, Math.ceil(-Math.log10(y1 - y0)) + 1);
    add("text", { x: L - 4, y: T + 10, "font-size": 11, "text-anchor": "end" }, y1.toFixed(digits));
    add("text", { x: L - 4, y: H - B, "font-size": 11, "text-anchor": "end" }, y0.toFixed(digits));
    const colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"];
    const legend = [];
    series.forEach(([seed, f], i) => {
      const color = colors[i % colors.length];
      const ok = f.history.filter((p) => Number.isFinite(p[2]));
      add("polyline", { points: ok.map((p) => sx(p[0]) + "," + sy(p[2])).join(" "), fill: "none", stroke: color, "stroke-width": 2 });
      ok.forEach((p) => add("circle", { cx: sx(p[0]), cy: sy(p[2]), r: 2.5, fill: color }));
      legend.push(el("span", { style: "color:" + color }, "■ seed " + seed + (f.best_step != null ? " (best step " + f.best_step + ")" : "")));
    });
    return el("div", {}, el("p", { class: "note" }, "Validation score (mean over the validation groups) during training, per seed."), svg, el("div", { class: "legend note" }, legend));
  }

  function metricsTable(result) {
    const metric = result.metric;
    const group = metric === "accuracy" ? "user_accuracy" : metric;
    const rows = Object.entries(result.metrics).sort((a, b) => Number(a[0]) - Number(b[0]));
    const subsets = ["seen", "unseen"].filter((s) => rows.some(([, c]) => c[s]));
    return el(
      "table",
      {},
      el("tr", {}, ["K", metric, "95% CI", "pooled", "groups", "items", ...subsets].map((h) => el("th", {}, h))),
      rows.map(([k, cell]) =>
        el(
          "tr",
          {},
          el("td", { class: "num" }, k),
          el("td", { class: "num" }, f3(cell[metric].mean)),
          el("td", {}, ci(cell[metric].ci)),
          el("td", { class: "num" }, f3(cell[group].pooled)),
          el("td", { class: "num" }, cell[group].n_groups),
          el("td", { class: "num" }, cell[group].n_items),
          subsets.map((s) => el("td", { class: "num" }, cell[s] ? f3(cell[s][metric].mean) : ""))
        )
      )
    );
  }

  function bars(options, target, pred) {
    return el(
      "table",
      { class: "bars" },
      options.map((option, i) =>
        el(
          "tr",
          {},
          el("td", {}, option),
          el("td", {}, el("span", { class: "bar target", style: "width:" + Math.round(target[i] * 200) + "px" }), " " + f3(target[i])),
          el("td", {}, el("span", { class: "bar pred", style: "width:" + Math.round(pred[i] * 200) + "px" }), " " + f3(pred[i]))
        )
      )
    );
  }

  function predictionsSection(app, run, items) {
    const PER_PAGE = 20;
    const holder = el("div", { class: "predictions" });
    const state = { page: 0, group: "", rows: [] };
    const controls = el("div", { class: "filters" });
    const render = () => {
      const rows = state.rows.filter((r) => state.group === "" || r[0] === state.group);
      const pages = Math.max(1, Math.ceil(rows.length / PER_PAGE));
      state.page = Math.min(state.page, pages - 1);
      const nav = el(
        "div",
        { class: "filters" },
        el("button", { onclick: () => ((state.page = Math.max(0, state.page - 1)), render()) }, "previous"),
        "page " + (state.page + 1) + " of " + pages + " (" + rows.length + " predictions)",
        el("button", { onclick: () => ((state.page = Math.min(pages - 1, state.page + 1)), render()) }, "next")
      );
      const cards = rows.slice(state.page * PER_PAGE, (state.page + 1) * PER_PAGE).map(([group, item, split, pred, target, score]) => {
        const text = items[item];
        const options = text ? text[1] : pred.map((_, i) => "option " + (i + 1));
        return el(
          "div",
          { class: "item" },
          el("div", { class: "note" }, "group " + group + " · item " + item + (split ? " · " + split : "") + " · score " + f3(score)),
          el("div", { class: "prompt" }, text ? text[0] : "(the run folder has no items.jsonl: prompt not recorded)"),
          bars(options, target, pred)
        );
      });
      holder.replaceChildren(nav, el("div", { class: "legend note" }, el("span", {}, "■ target (blue)"), el("span", {}, "■ predicted (orange)")), ...cards);
    };
    const open = async (i) => {
      state.rows = await load(run.pages[Number(i)].file);
      state.page = 0;
      const groups = [...new Set(state.rows.map((r) => r[0]))].sort();
      if (!groups.includes(state.group)) state.group = "";
      controls.replaceChildren(
        select("K and seed", run.pages.map((p, j) => [String(j), "K=" + p.shots + ", seed " + p.seed + " (" + p.n + ")"]), open, String(i)),
        select("group", [["", "all"], ...groups.map((g) => [g, g])], (g) => ((state.group = g), (state.page = 0), render()), state.group)
      );
      render();
    };
    app.append(el("h2", {}, "Predictions"), controls, holder);
    if (run.pages.length) return open(0);
    holder.append(el("p", {}, "No predictions file in this run folder."));
    return null;
  }

  async function runPage(app, index, taskName, id) {
    const entry = index.tasks.find((t) => t.task === taskName);
    if (!entry) throw new Error("no task " + taskName);
    const task = await load(entry.file);
    const listed = task.runs.find((r) => r.id === id);
    if (!listed) throw new Error("no run " + id);
    const [run, items] = await Promise.all([load(listed.file), load(task.items)]);
    const result = run.result;
    document.getElementById("crumbs").replaceChildren(" / ", link(["task", taskName], taskName), " / ", id);
    app.append(el("h1", {}, id), el("h2", {}, "Results"), metricsTable(result));
    const validation = curve(result.fit);
    if (validation) app.append(el("h2", {}, "Validation curve"), validation);
    const predictions = el("div", {});
    app.append(
      predictions,
      el("h2", {}, "Spec"),
      keyValues(result.spec),
      el("h2", {}, "Provenance"),
      keyValues({ created: result.created, cards: result.cards, device: result.device, git: result.git, ci: result.ci }),
      keyValues(result.versions),
      el("h2", {}, "Data"),
      keyValues(result.data),
      el("h2", {}, "Split"),
      keyValues(result.split),
      el("h2", {}, "Timings (s)"),
      keyValues(result.timings)
    );
    await predictionsSection(predictions, run, items);
  }

  async function route() {
    const app = document.getElementById("app");
    const parts = (location.hash.slice(1) || "/").split("/").map(decodeURIComponent);
    document.getElementById("crumbs").replaceChildren();
    try {
      const index = await load("data/index.js");
      app.replaceChildren();
      if (parts[1] === "task") await taskPage(app, index, parts[2]);
      else if (parts[1] === "run") await runPage(app, index, parts[2], parts[3]);
      else indexPage(app, index);
      document.body.dataset.ready = location.hash || "#/";
    } catch (error) {
      app.replaceChildren(el("p", { class: "error" }, "Cannot show this page: " + error.message));
      document.body.dataset.ready = "error";
    }
  }

  window.addEventListener("hashchange", route);
  route();
})();
