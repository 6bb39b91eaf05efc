#!/usr/bin/env node
// CPU per call of instrumentService's wrapper (client/server/grpc-server-metrics.ts) alone, on fake
// calls in one process: a unary call, and a server stream of 10 writes. Compares the compiled code
// of another checkout (a before) with this one, interleaved, 7 rounds, medians. `npm run build` first.
//
//   node bench/server-metrics-cost.mjs BEFORE_ROOT [--calls 200000]
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { Registry } from "prom-client";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { calls: { type: "string", default: "200000" } },
});
if (positionals.length !== 1) {
  console.error("usage: node bench/server-metrics-cost.mjs BEFORE_ROOT [--calls N]");
  process.exit(2);
}
const load = (checkout) =>
  import(pathToFileURL(join(resolve(checkout), "dist/client/server/grpc-server-metrics.js")).href);
const variants = { before: await load(positionals[0]), after: await load(root) };
const calls = Number(values.calls);
const STREAM_WRITES = 10;

const definition = {
  Echo: { path: "/leasehold.demo.v1.EchoService/Echo", requestStream: false, responseStream: false },
  EchoStream: {
    path: "/leasehold.demo.v1.EchoService/EchoStream",
    requestStream: false,
    responseStream: true,
  },
};
/** A grpc-js server call reduced to what the wrapper uses; `end()` emits `finish`. */
function fakeCall() {
  let onFinish;
  return {
    on(event, listener) {
      if (event === "finish") onFinish = listener;
      return this;
    },
    write: () => true,
    end: () => onFinish?.(),
  };
}
const implementation = {
  Echo: (_call, callback) => callback(null, {}),
  EchoStream: (call) => {
    for (let i = 0; i < STREAM_WRITES; i++) call.write({});
    call.end();
  },
};
const cpuUs = (since) => {
  const { user, system } = process.cpuUsage(since);
  return user + system;
};

function round({ instrumentService }) {
  const wrapped = instrumentService(definition, implementation, new Registry());
  const callback = () => undefined;
  const unaryCall = fakeCall();
  let since = process.cpuUsage();
  for (let i = 0; i < calls; i++) wrapped.Echo(unaryCall, callback);
  const unary = cpuUs(since) / calls;
  since = process.cpuUsage();
  for (let i = 0; i < calls / STREAM_WRITES; i++) wrapped.EchoStream(fakeCall());
  return { unary, stream: cpuUs(since) / (calls / STREAM_WRITES) };
}

const samples = { before: [], after: [] };
round(variants.before); // warm-up
round(variants.after);
for (let r = 0; r < 7; r++)
  for (const name of r % 2 === 0 ? ["before", "after"] : ["after", "before"])
    samples[name].push(round(variants[name]));
const median = (list) => list.toSorted((a, b) => a - b)[list.length >> 1];
for (const [name, list] of Object.entries(samples))
  console.log(
    `${name}: unary ${median(list.map((s) => s.unary)).toFixed(2)} µs/call, ` +
      `server stream of ${STREAM_WRITES} writes ${median(list.map((s) => s.stream)).toFixed(2)} µs/stream`,
  );
console.log(
  `load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")}`,
);
