// palisade view: the page. Reads the data document of <script id="palisade-data">
// (docs/view.md: JSON, or gzip in base64 for big inputs) and draws a graph (cytoscape)
// and a truth matrix (drawn only where it is scrolled to, so 500 pods stay fast), with
// the explain text of a pair on click.
import cytoscape from "cytoscape";
import { buildModel, podMatches, cellIndex, graphElements } from "./model.js";

/** The data document: JSON as it is, or gzip-compressed JSON in base64 (big inputs). */
async function readData() {
  const e = document.getElementById("palisade-data");
  if (e.type === "application/json") return JSON.parse(e.textContent);
  const bin = atob(e.textContent.trim());
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

const scriptStart = Math.round(performance.now());
readData()
  .then((data) => run(data, { scriptStart }))
  .catch((e) => {
    console.error(`palisade view: ${e}`);
    document.body.textContent = `palisade view: the page's data cannot be read: ${e}`;
  });

function run(data, timings) {
  timings.parsed = Math.round(performance.now());
  const model = buildModel(data);
  timings.model = Math.round(performance.now());
  /** Graphs above these sizes are not drawn until a search narrows them. */
  const GRAPH_MAX_NODES = 300;
  const GRAPH_MAX_EDGES = 3000;

  const state = { matrix: 0, query: "", denied: false, selected: null };

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  // ---- layout ----------------------------------------------------------------------
  const portSelect = el("select", { id: "port", title: "Port and protocol of the matrix" });
  data.matrices.forEach((m, i) => portSelect.append(el("option", { value: String(i) }, `${m.protocol}/${m.port}`)));
  portSelect.addEventListener("change", () => { state.matrix = Number(portSelect.value); refresh(); });
  const search = el("input", { id: "search", type: "search", placeholder: "search: pod, label (app=web), policy", autocomplete: "off" });
  let searchTimer = 0;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.query = search.value.trim(); refresh(); }, 120);
  });
  const deniedBox = el("input", { id: "show-denied", type: "checkbox" });
  deniedBox.addEventListener("change", () => { state.denied = deniedBox.checked; drawGraph(); });
  const summary = el("span", { class: "summary", id: "summary" });
  document.body.append(
    el("header", {},
      el("h1", {}, "palisade view"),
      el("span", { class: "inputs" }, data.inputs.join(" ")),
      portSelect, search,
      el("label", {}, deniedBox, " denied flows in the graph"),
      summary),
    el("div", { class: "notes", id: "notes" }, model.notes.join("\n")),
  );
  const graphBox = el("div", { id: "graph" });
  const graphMessage = el("div", { id: "graph-message" });
  const matrixBox = el("div", { id: "matrix", tabindex: "0" });
  const panel = el("aside", { id: "explain" },
    el("h3", {}, "Explain"),
    el("p", { class: "muted" }, "Click a cell of the matrix or an edge of the graph to see why a connection is allowed or denied."));
  document.body.append(el("main", {},
    el("div", { class: "views" },
      el("section", {}, el("h2", { id: "graph-title" }, "Graph"), graphBox, graphMessage),
      el("section", {}, el("h2", {}, ""), matrixBox)),
    panel));

  // ---- explain panel ----------------------------------------------------------------
  async function explainText(mi, idx) {
    const m = data.matrices[mi];
    const r = m.results[idx];
    if (data.explain) return data.explain[mi][idx];
    if (data.explainMode === "serve") {
      const q = new URLSearchParams({ from: r.from, to: r.to, port: String(m.port), protocol: m.protocol });
      const res = await fetch(`/explain?${q}`);
      return await res.text();
    }
    const files = data.inputs.map((f) => `-f ${f}`).join(" ");
    return `(explain text is not embedded for this many pairs; run\n  palisade explain ${files} --from ${r.from} --to ${r.to} --port ${m.port} --protocol ${m.protocol}\nor open this input with palisade view --serve)`;
  }

  async function showPair(mi, idx, others) {
    const m = data.matrices[mi];
    const r = m.results[idx];
    state.selected = { mi, idx };
    const verdict = r.verdict === "allow" ? "ALLOWED" : "DENIED";
    const pre = el("pre", { id: "explain-text" }, "…");
    const children = [
      el("h3", {}, `${r.from} → ${r.to} ${m.protocol}/${m.port}: `, el("span", { class: `verdict-${r.verdict}`, id: "explain-verdict" }, verdict)),
      el("p", {}, el("span", { class: "deciding" }, r.verdict === "allow" ? "Allowed by: " : "Denied by: "), el("span", { id: "explain-deciding" }, r.reason || "no policy isolates either side")),
    ];
    const change = model.diffOf(mi, r.from, r.to);
    if (change) children.push(el("p", { class: "deciding" }, `Changed by the diff: ${change.before} → ${change.after}`));
    children.push(pre);
    if (others && others.length > 1) {
      const list = el("div", { class: "pairs" }, el("p", { class: "muted" }, `${others.length} pod pairs on this edge:`));
      for (const o of others.slice(0, 200)) {
        const rr = m.results[o];
        list.append(el("a", { onclick: () => showPair(mi, o, others) }, `${rr.verdict === "allow" ? "✓" : "✗"} ${rr.from} → ${rr.to}`));
      }
      children.push(list);
    }
    panel.replaceChildren(...children);
    drawMatrix();
    pre.textContent = await explainText(mi, idx);
  }

  function showPod(name) {
    const p = model.podByName.get(name);
    if (!p) return;
    const dl = el("dl", {},
      el("dt", {}, "Namespace"), el("dd", {}, p.namespace),
      el("dt", {}, "Workload"), el("dd", {}, p.workload_label || "(a pod of its own)"),
      el("dt", {}, "Labels"), el("dd", {}, Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join("\n") || "(none)"),
      el("dt", {}, "Selected by"), el("dd", {}, p.policies.join("\n") || "no policy: every connection allowed"));
    panel.replaceChildren(el("h3", {}, name), dl);
  }

  // ---- matrix -------------------------------------------------------------------------
  function visiblePods() { return model.pods.filter((p) => podMatches(p, state.query)); }
  let shown = [];

  function drawMatrix() {
    const cs = getComputedStyle(document.documentElement);
    const C = parseInt(cs.getPropertyValue("--cell"), 10);
    const RH = parseInt(cs.getPropertyValue("--rowhead"), 10);
    const CH = parseInt(cs.getPropertyValue("--colhead"), 10);
    const n = shown.length;
    let spacer = matrixBox.firstChild;
    if (!spacer) { spacer = el("div", { class: "spacer" }); matrixBox.append(spacer); }
    spacer.style.width = `${RH + n * C}px`;
    spacer.style.height = `${CH + n * C}px`;
    const sl = matrixBox.scrollLeft, st = matrixBox.scrollTop;
    const w = matrixBox.clientWidth, h = matrixBox.clientHeight;
    const c0 = Math.max(0, Math.floor(sl / C)), c1 = Math.min(n, Math.ceil((sl + w - RH) / C) + 1);
    const r0 = Math.max(0, Math.floor(st / C)), r1 = Math.min(n, Math.ceil((st + h - CH) / C) + 1);
    const m = data.matrices[state.matrix];
    const q = state.query.toLowerCase();
    const frag = document.createDocumentFragment();
    const cells = el("div", { class: "layer", id: "cells" });
    for (let r = r0; r < r1; r++) {
      const from = shown[r];
      for (let c = c0; c < c1; c++) {
        const to = shown[c];
        const d = el("div");
        let cls = "cell";
        if (from.index === to.index) { cls += " self"; d.textContent = "·"; }
        else {
          const idx = cellIndex(model, state.matrix, from.index, to.index);
          const res = m.results[idx];
          cls += res.verdict === "allow" ? " allow" : " deny";
          d.textContent = res.verdict === "allow" ? "✓" : "✗";
          d.dataset.i = String(idx);
          if (q && !model.isLabelQuery(q) && res.reason.toLowerCase().includes(q)) cls += " hit";
          if (model.diffOf(state.matrix, from.name, to.name)) cls += " changed";
          if (state.selected && state.selected.mi === state.matrix && state.selected.idx === idx) cls += " selected";
        }
        if (r > 0 && shown[r - 1].namespace !== from.namespace) cls += " nsrow";
        if (c > 0 && shown[c - 1].namespace !== to.namespace) cls += " nscol";
        d.className = cls;
        d.dataset.from = from.name;
        d.dataset.to = to.name;
        d.title = `${from.name} → ${to.name}`;
        d.style.left = `${RH + c * C}px`;
        d.style.top = `${CH + r * C}px`;
        cells.append(d);
      }
    }
    frag.append(cells);
    // Row names stay at the left edge and column names at the top edge while scrolling.
    const rows = el("div", { class: "rowhead", id: "rowhead" });
    rows.style.left = `${sl}px`; rows.style.top = "0px";
    for (let r = r0; r < r1; r++) {
      const p = shown[r];
      const newNs = r === 0 || shown[r - 1].namespace !== p.namespace;
      const lab = el("div", { class: newNs ? "rowlabel ns" : "rowlabel", "data-pod": p.name, title: p.name }, p.name);
      lab.style.top = `${CH + r * C}px`;
      const band = el("div", { class: "nsband" }); band.style.background = model.nsColor(p.namespace);
      lab.prepend(band);
      lab.addEventListener("click", () => showPod(p.name));
      rows.append(lab);
    }
    frag.append(rows);
    const cols = el("div", { class: "colhead", id: "colhead" });
    cols.style.top = `${st}px`; cols.style.left = "0px";
    const under = el("div");
    under.style.cssText = `position:absolute;left:0;top:0;width:${RH + n * C}px;height:${CH}px;background:#fff`;
    cols.append(under);
    for (let c = c0; c < c1; c++) {
      const p = shown[c];
      const newNs = c === 0 || shown[c - 1].namespace !== p.namespace;
      const lab = el("div", { class: newNs ? "collabel ns" : "collabel", "data-pod": p.name, title: p.name }, el("span", {}, p.name));
      lab.style.left = `${RH + c * C}px`;
      lab.style.borderBottom = `4px solid ${model.nsColor(p.namespace)}`;
      lab.addEventListener("click", () => showPod(p.name));
      cols.append(lab);
    }
    frag.append(cols);
    const corner = el("div", { class: "corner" }, `${m.protocol}/${m.port}: rows from, columns to. ✓ allow ✗ deny`);
    corner.style.left = `${sl}px`; corner.style.top = `${st}px`;
    corner.style.width = `${RH}px`; corner.style.height = `${CH}px`;
    frag.append(corner);
    spacer.replaceChildren(frag);
  }
  let scrollPending = false;
  matrixBox.addEventListener("scroll", () => {
    if (scrollPending) return;
    scrollPending = true;
    requestAnimationFrame(() => { scrollPending = false; drawMatrix(); });
  });
  matrixBox.addEventListener("click", (ev) => {
    const t = ev.target.closest(".cell");
    if (!t || t.dataset.i === undefined) return;
    showPair(state.matrix, Number(t.dataset.i));
  });
  window.addEventListener("resize", () => drawMatrix());

  // ---- graph --------------------------------------------------------------------------
  let cy = null;
  function drawGraph() {
    const names = new Set(shown.map((p) => p.name));
    const els = graphElements(model, names, state.denied, GRAPH_MAX_NODES);
    if (cy) { cy.destroy(); cy = null; }
    if (els.nodeCount > GRAPH_MAX_NODES || els.edgeCount > GRAPH_MAX_EDGES) {
      const edges = els.edgeCount < 0 ? "" : ` and ${els.edgeCount} edges`;
      graphMessage.textContent = `${els.nodeCount} workloads${edges}: too many to draw; search to narrow (the matrix shows every pair).`;
      graphBox.dataset.edges = "0";
      return;
    }
    graphMessage.textContent = els.nodeCount === 0 ? "no pod matches the search" : "";
    cy = cytoscape({
      container: graphBox,
      elements: els.elements,
      boxSelectionEnabled: false,
      style: [
        { selector: "node", style: { label: "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 3, "background-color": "data(color)", width: 18, height: 18 } },
        { selector: ":parent", style: { label: "data(label)", "text-valign": "top", "font-size": 12, "font-weight": "bold", "background-color": "data(tint)", "background-opacity": 0.6, "border-color": "#8c959f", "border-width": 1, shape: "round-rectangle", padding: 14 } },
        { selector: "edge", style: { width: 1.5, "curve-style": "bezier", "target-arrow-shape": "triangle", "arrow-scale": 0.8, label: "data(label)", "font-size": 8, "text-rotation": "autorotate", color: "#57606a", "line-color": "#1a7f37", "target-arrow-color": "#1a7f37" } },
        { selector: "edge.partial", style: { "line-style": "dashed", "line-color": "#bf8700", "target-arrow-color": "#bf8700" } },
        { selector: "edge.deny", style: { "line-style": "dotted", "line-color": "#cf222e", "target-arrow-color": "#cf222e" } },
        { selector: "edge.changed", style: { width: 4 } },
        { selector: ":selected", style: { "overlay-opacity": 0.15, "overlay-color": "#0969da" } },
      ],
      layout: { name: els.nodeCount > 60 ? "grid" : "cose", animate: false, padding: 24, nodeDimensionsIncludeLabels: true, randomize: false },
    });
    graphBox.dataset.edges = String(els.edgeCount);
    cy.on("tap", "edge", (ev) => {
      const d = ev.target.data();
      const first = d.pairs.find((i) => data.matrices[d.matrix].results[i].verdict === (d.kind === "deny" ? "deny" : "allow")) ?? d.pairs[0];
      showPair(d.matrix, first, d.pairs);
    });
    cy.on("tap", "node", (ev) => {
      const d = ev.target.data();
      if (d.pod) showPod(d.pod);
    });
  }

  function refresh() {
    shown = visiblePods();
    const ports = data.matrices.map((m) => `${m.protocol}/${m.port}`).join(", ");
    document.getElementById("graph-title").textContent = `Graph: namespaces, workloads, allowed flows on ${ports}` + (data.matrices.length > 1 ? " (edges labelled by port)" : "");
    const m = data.matrices[state.matrix];
    const denied = m.results.filter((r) => r.verdict === "deny").length;
    summary.textContent = `${model.pods.length} pods, ${m.results.length} pairs on ${m.protocol}/${m.port}: ${m.results.length - denied} allowed, ${denied} denied` + (state.query ? `; ${shown.length} pods match "${state.query}"` : "");
    drawMatrix();
    drawGraph();
  }

  refresh();
  // For people and tests: how long the page took to be drawn (from navigation start).
  const ms = Math.round(performance.now());
  timings.drawn = ms;
  document.body.dataset.ready = String(ms);
  document.body.dataset.timings = JSON.stringify(timings);
  window.palisadeView = { renderedMs: ms, timings, model };
}
