#!/usr/bin/env node
// Where a heap snapshot's memory is, without DevTools: self size and count by constructor, then
// retained size (dominator tree, Cooper–Harvey–Kennedy; weak edges ignored) by constructor, and
// the largest single retainers. A snapshot is taken after a full GC, so it holds live objects
// only: compare its total with the process's `nodejs_heap_size_used_bytes` to see how much of the
// used heap was garbage. Take one from the registry of bench/registry-scale.mjs with
// `--registry-node-args=--heapsnapshot-signal=SIGUSR2` and env LEASEHOLD_BENCH_SIGNAL_AT_END=SIGUSR2
// (the file lands in the benchmark's working directory).
//
//   node --max-old-space-size=8000 bench/heap-summary.mjs Heap.*.heapsnapshot [--top 40]
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  options: { top: { type: "string", default: "40" } },
  allowPositionals: true,
});
if (positionals.length !== 1) {
  process.stderr.write("usage: heap-summary.mjs FILE.heapsnapshot [--top N]\n");
  process.exit(2);
}
const top = Number(values.top);
const { snapshot, nodes, edges, strings } = JSON.parse(readFileSync(positionals[0], "utf8"));
const {
  node_fields: nodeFields,
  edge_fields: edgeFields,
  node_types: nodeTypes,
  edge_types: edgeTypes,
} = snapshot.meta;
const [NF, EF] = [nodeFields.length, edgeFields.length];
const [iType, iName, iSize, iEdges] = ["type", "name", "self_size", "edge_count"].map((f) =>
  nodeFields.indexOf(f),
);
const [eType, eTo] = ["type", "to_node"].map((f) => edgeFields.indexOf(f));
const weak = edgeTypes[0].indexOf("weak");
const N = nodes.length / NF;
const firstEdge = new Uint32Array(N + 1);
for (let i = 0; i < N; i += 1) firstEdge[i + 1] = firstEdge[i] + nodes[i * NF + iEdges] * EF;
const selfSize = (i) => nodes[i * NF + iSize];
/** `type:constructor` for objects, closures and native objects; the type alone otherwise. */
const label = (i) => {
  const type = nodeTypes[0][nodes[i * NF + iType]];
  return ["object", "closure", "native", "hidden", "code", "array"].includes(type)
    ? `${type}:${strings[nodes[i * NF + iName]]}`.slice(0, 80)
    : type;
};
const mb = (bytes) => `${(bytes / 2 ** 20).toFixed(1).padStart(8)} MB`;
const print = (title, rows) => {
  console.log(`\n--- ${title} ---`);
  for (const [name, [bytes, count]] of [...rows].sort((a, b) => b[1][0] - a[1][0]).slice(0, top))
    console.log(`${mb(bytes)} ${String(count).padStart(9)}  ${name}`);
};

const bySelf = new Map();
let total = 0;
for (let i = 0; i < N; i += 1) {
  total += selfSize(i);
  const row = bySelf.get(label(i)) ?? [0, 0];
  row[0] += selfSize(i);
  row[1] += 1;
  bySelf.set(label(i), row);
}
console.log(`${N} nodes, ${(total / 2 ** 20).toFixed(1)} MB live`);
print("self size by constructor", bySelf);

// Predecessors (CSR), a post-order from the root, then iterate to the dominator fixpoint.
const predStart = new Uint32Array(N + 1);
const forEachEdge = (i, visit) => {
  for (let e = firstEdge[i]; e < firstEdge[i + 1]; e += EF)
    if (edges[e + eType] !== weak) visit(edges[e + eTo] / NF);
};
for (let i = 0; i < N; i += 1) forEachEdge(i, (to) => (predStart[to + 1] += 1));
for (let i = 0; i < N; i += 1) predStart[i + 1] += predStart[i];
const preds = new Uint32Array(predStart[N]);
const fill = predStart.slice(0, N);
for (let i = 0; i < N; i += 1) forEachEdge(i, (to) => (preds[fill[to]++] = i));
const postNumber = new Int32Array(N).fill(-1);
const postOrder = [];
const seen = new Uint8Array(N);
const stack = [[0, firstEdge[0]]];
seen[0] = 1;
while (stack.length > 0) {
  const frame = stack[stack.length - 1];
  const [node] = frame;
  let next = -1;
  while (frame[1] < firstEdge[node + 1] && next < 0) {
    const e = frame[1];
    frame[1] += EF;
    const to = edges[e + eTo] / NF;
    if (edges[e + eType] !== weak && !seen[to]) next = to;
  }
  if (next >= 0) {
    seen[next] = 1;
    stack.push([next, firstEdge[next]]);
  } else {
    stack.pop();
    postNumber[node] = postOrder.length;
    postOrder.push(node);
  }
}
const idom = new Int32Array(N).fill(-1);
idom[0] = 0;
for (let changed = true; changed;) {
  changed = false;
  for (let k = postOrder.length - 2; k >= 0; k -= 1) {
    const v = postOrder[k];
    let dom = -1;
    for (let p = predStart[v]; p < predStart[v + 1]; p += 1) {
      let u = preds[p];
      if (idom[u] < 0 || postNumber[u] < 0) continue;
      if (dom < 0) {
        dom = u;
        continue;
      }
      while (u !== dom) {
        while (postNumber[u] < postNumber[dom]) u = idom[u];
        while (postNumber[dom] < postNumber[u]) dom = idom[dom];
      }
    }
    if (dom >= 0 && idom[v] !== dom) {
      idom[v] = dom;
      changed = true;
    }
  }
}
const retained = new Float64Array(N);
for (const v of postOrder) {
  retained[v] += selfSize(v);
  if (v !== 0) retained[idom[v]] += retained[v];
}
// Retained by constructor, counting a node only when its dominator is of another constructor.
const byRetained = new Map();
for (const v of postOrder) {
  if (v === 0 || label(idom[v]) === label(v)) continue;
  const row = byRetained.get(label(v)) ?? [0, 0];
  row[0] += retained[v];
  row[1] += 1;
  byRetained.set(label(v), row);
}
print("retained size by constructor (outermost of each)", byRetained);
console.log("\n--- largest single retainers ---");
for (const v of [...postOrder].sort((a, b) => retained[b] - retained[a]).slice(1, 21))
  console.log(`${mb(retained[v])}  ${label(v)} @${v}`);
