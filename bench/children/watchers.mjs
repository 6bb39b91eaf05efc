// Many membership watchers in one process: `count` Watch streams of the registry on one service
// (kind "leasehold"), or `count` raw etcd3 watchers on one key prefix (kind "etcd3"). Every put
// written by the benchmark carries its send time (`metadata.sent_ms`, see cluster.mjs nowMs) and
// an event id (`metadata.event`, else the instance id); each watcher records now − sent per event.
// Prints `ready` once every watcher is open (snapshot received / watch created). Commands on stdin:
// `received` → `received N` (events received since the last report, duplicates included);
// `report` → `report {"received","duplicates","messages","ended","latenciesMs":[p50,p99,max]}` since
// the last report (`messages`: delta messages, or etcd watch responses, that carried them; `ended`:
// watchers that ended so far, never reopened); `report all` adds `"all"`, every latency in ms,
// ascending, so the percentiles of several children can be taken together.
import { createInterface } from "node:readline";
import { percentile } from "../harness.mjs";
import { nowMs } from "../cluster.mjs";

const options = JSON.parse(process.argv[2]);
const watchers = [];
let latencies = [];
let duplicates = 0;
let messages = 0; // delta messages (leasehold) or etcd watch responses (etcd3) received
let ended = 0; // streams (or etcd3 watchers) that ended or failed, over the whole run

function record(seen, id, sentMs) {
  if (!Number.isFinite(sentMs)) return; // a put that is not a measured event
  if (seen.has(id)) duplicates += 1;
  else seen.add(id);
  latencies.push(nowMs() - sentMs);
}

if (options.kind === "leasehold") {
  const { connectRegistry } = await import("../../dist/client/index.js");
  // A few channels, as many callers would have: grpc-js multiplexes the streams of one channel.
  // At most 50 streams on each: the registry allows 100 per connection by default
  // (maxWatchStreamsPerConnection), and 1,000 streams on 8 channels were refused.
  const channels = Array.from({ length: Math.max(8, Math.ceil(options.count / 50)) }, (_, i) =>
    connectRegistry(options.registry, { "grpc.bench": i }),
  );
  await Promise.all(
    Array.from({ length: options.count }, (_, i) => {
      const seen = new Set();
      watchers.push(seen);
      const stream = channels[i % channels.length].watch({ service: options.service, startRevision: "0" });
      return new Promise((resolve, reject) => {
        stream.on("data", (message) => {
          if (message.event?.$case === "snapshot") resolve();
          if (message.event?.$case !== "delta") return;
          messages += 1;
          for (const instance of message.event.value.upserted)
            record(
              seen,
              instance.metadata["event"] ?? instance.instanceId,
              Number(instance.metadata["sent_ms"]),
            );
        });
        stream.on("error", (error) => {
          ended += 1;
          reject(error);
          process.stderr.write(`watch stream ${i} ended: ${error.message}\n`);
        });
      });
    }),
  );
} else {
  const { Etcd3 } = await import("etcd3");
  const client = new Etcd3({ hosts: options.etcd });
  for (let i = 0; i < options.count; i += 1) {
    const seen = new Set();
    watchers.push(seen);
    const watcher = await client.watch().prefix(options.prefix).create();
    watcher.on("data", () => (messages += 1));
    watcher.on("put", (kv) => {
      const value = JSON.parse(kv.value.toString());
      record(seen, value.metadata?.event ?? value.instance_id, Number(value.metadata?.sent_ms));
    });
    watcher.on(
      "error",
      (error) => (ended += 1) && process.stderr.write(`etcd3 watcher ${i}: ${error.message}\n`),
    );
  }
}

process.stdout.write("ready\n");
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "received") process.stdout.write(`received ${latencies.length}\n`);
  if (line !== "report" && line !== "report all") return;
  const sorted = latencies.sort((a, b) => a - b);
  const report = {
    received: sorted.length,
    duplicates,
    messages,
    ended,
    latenciesMs: [percentile(sorted, 0.5), percentile(sorted, 0.99), sorted.at(-1) ?? Number.NaN],
    ...(line === "report all" && { all: sorted.map((ms) => Math.round(ms * 1000) / 1000) }),
  };
  latencies = [];
  duplicates = 0;
  messages = 0;
  for (const seen of watchers) seen.clear();
  process.stdout.write(`report ${JSON.stringify(report)}\n`);
});
process.stdin.on("end", () => process.exit(0));
