// What the page derives from its data document: pod order, the index of a pair in a
// matrix's results, search, the graph's elements, and the diff's changes.

/** Pods in matrix order (namespace, then name), each with its position. */
export function buildModel(data) {
  const pods = data.pods.map((p, index) => ({ ...p, index }));
  const podByName = new Map(pods.map((p) => [p.name, p]));
  const n = pods.length;
  // A matrix lists every ordered pair of distinct pods, sources in pod order, then
  // destinations: the pair's index is arithmetic. A matrix in another order (or of
  // fewer pods) gets a lookup table instead.
  const index = data.matrices.map((m) => {
    let ordered = m.results.length === n * (n - 1);
    for (let k = 0; ordered && k < m.results.length; k++) {
      const f = Math.floor(k / (n - 1));
      const t0 = k % (n - 1);
      const t = t0 < f ? t0 : t0 + 1;
      ordered = m.results[k].from === pods[f].name && m.results[k].to === pods[t].name;
    }
    if (ordered) return null;
    const map = new Map();
    m.results.forEach((r, k) => map.set(`${r.from}\u0000${r.to}`, k));
    return map;
  });
  const changes = new Map();
  for (const c of (data.diff && data.diff.changes) || []) {
    changes.set(`${c.protocol}/${c.port}\u0000${c.from}\u0000${c.to}`, c);
  }
  const notes = [];
  const first = data.matrices[0] || {};
  if (first.errors && first.errors.length) {
    notes.push(`This page excludes ${first.errors.length} invalid object(s): ` + first.errors.map((e) => `${e.object} (${e.file}: ${e.message})`).join("; "));
  }
  if (first.simulatedAddresses) {
    notes.push(`${Object.keys(first.simulatedAddresses).length} pod(s) without status.podIP have simulated addresses (docs/semantics.md, "Workloads and simulated addresses").`);
  }
  if (data.explainMode === "none") {
    notes.push("Explain text is not embedded for this many pairs: each cell shows its deciding rule; palisade view --serve computes the full text per click.");
  }
  const hue = new Map();
  [...new Set(pods.map((p) => p.namespace))].forEach((ns, i) => hue.set(ns, (i * 137) % 360));
  return {
    pods, podByName, index, notes, data,
    nsColor: (ns) => `hsl(${hue.get(ns) ?? 0}, 55%, 45%)`,
    nsTint: (ns) => `hsl(${hue.get(ns) ?? 0}, 60%, 95%)`,
    isLabelQuery: (q) => q.includes("="),
    diffOf(mi, from, to) {
      if (changes.size === 0) return undefined;
      const m = data.matrices[mi];
      return changes.get(`${m.protocol}/${m.port}\u0000${from}\u0000${to}`);
    },
  };
}

/** The index in matrix `mi`'s results of the pair of pods at positions `f` and `t`. */
export function cellIndex(model, mi, f, t) {
  const map = model.index[mi];
  if (map === null) {
    const n = model.pods.length;
    return f * (n - 1) + (t < f ? t : t - 1);
  }
  return map.get(`${model.pods[f].name}\u0000${model.pods[t].name}`);
}

/**
 * Whether pod `p` matches a search: `k=v` (or `k=`) a label; otherwise the text in its
 * name, a label key or value, its workload, or a policy that selects it.
 */
export function podMatches(p, query) {
  const q = query.toLowerCase();
  if (!q) return true;
  if (q.includes("=")) {
    const [k, v] = q.split("=", 2);
    return Object.entries(p.labels).some(([lk, lv]) => lk.toLowerCase() === k.trim() && (v.trim() === "" || lv.toLowerCase() === v.trim()));
  }
  if (p.name.toLowerCase().includes(q)) return true;
  if (p.workload && p.workload.toLowerCase().includes(q)) return true;
  if (Object.entries(p.labels).some(([k, v]) => k.toLowerCase().includes(q) || v.toLowerCase().includes(q))) return true;
  return p.policies.some((x) => x.toLowerCase().includes(q));
}

/**
 * Cytoscape elements for the pods named in `names`: a compound node per namespace, a
 * node per workload (or pod of its own), an edge per workload pair and port where some
 * pair is allowed (`partial` when others are denied), and, with `denied`, an edge
 * where every pair is denied.
 */
export function graphElements(model, names, denied, maxNodes = Infinity) {
  const { data, pods } = model;
  const nodeOf = (p) => (p.workload ? `w:${p.workload}` : `p:${p.name}`);
  const nodes = new Map();
  const spaces = new Set();
  for (const p of pods) {
    if (!names.has(p.name)) continue;
    spaces.add(p.namespace);
    const id = nodeOf(p);
    if (!nodes.has(id)) {
      const short = (p.workload || p.name).split("/").slice(1).join("/");
      const label = p.workload_label ? `${short} (${p.workload_label.split(" ")[0]} ${p.workload_label.split(" ").pop()})` : short;
      nodes.set(id, { data: { id, parent: `ns:${p.namespace}`, label, color: model.nsColor(p.namespace), pod: p.workload ? undefined : p.name } });
    }
  }
  // Too many nodes to draw: stop before walking every pair.
  if (nodes.size > maxNodes) return { elements: [], nodeCount: nodes.size, edgeCount: -1 };
  const edges = new Map();
  data.matrices.forEach((m, mi) => {
    m.results.forEach((r, k) => {
      const a = model.podByName.get(r.from), b = model.podByName.get(r.to);
      if (!a || !b || !names.has(a.name) || !names.has(b.name)) return;
      const s = nodeOf(a), t = nodeOf(b);
      if (s === t) return;
      const key = `${mi}\u0000${s}\u0000${t}`;
      let e = edges.get(key);
      if (!e) { e = { s, t, mi, allow: 0, deny: 0, pairs: [], changed: false }; edges.set(key, e); }
      if (r.verdict === "allow") e.allow++; else e.deny++;
      e.pairs.push(k);
      if (model.diffOf(mi, r.from, r.to)) e.changed = true;
    });
  });
  const elements = [...spaces].map((ns) => ({ data: { id: `ns:${ns}`, label: ns, tint: model.nsTint(ns) } }));
  elements.push(...nodes.values());
  let edgeCount = 0;
  for (const [key, e] of edges) {
    if (e.allow === 0 && !denied) continue;
    const m = data.matrices[e.mi];
    const kind = e.allow === 0 ? "deny" : e.deny > 0 ? "partial" : "allow";
    const classes = [kind, e.changed ? "changed" : ""].join(" ").trim();
    elements.push({ data: { id: `e:${key}`, source: e.s, target: e.t, label: data.matrices.length > 1 ? `${m.protocol}/${m.port}` : "", matrix: e.mi, kind, pairs: e.pairs }, classes });
    edgeCount++;
  }
  return { elements, nodeCount: nodes.size, edgeCount };
}
