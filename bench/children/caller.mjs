// The caller of the per-call overhead benchmark, alone in its process so process.cpuUsage() is
// its own: unary Echo calls to the same instances through
//   "leasehold"          the balanced client (round_robin, no metrics; client/balancing/),
//   "leasehold+metrics"  the same with ClientMetrics (prom-client),
//   "grpc-js"            a stock grpc-js client, built-in round_robin over a static ipv4: target,
//   "leasehold:POLICY"   the balanced client with another policy (every one but ring_hash, which
//                        needs a hash key per call), no metrics.
// Command `run VARIANT CALLS CONCURRENCY` →
// `result {"calls","wallMs","cpuUs","errors","firstError","p50Ms","p99Ms"}` (per-call latency).
import { credentials } from "@grpc/grpc-js";
import { createInterface } from "node:readline";
import { Registry } from "prom-client";
import {
  ClientMetrics,
  createBalancedClient,
  Instance,
  POLICY_NAMES,
  staticMembership,
} from "../../dist/client/index.js";
import { EchoServiceClient, EchoServiceService } from "../../dist/proto/gen/leasehold/demo/v1/echo.js";

const { addresses } = JSON.parse(process.argv[2]);
const instances = addresses.map((address, i) =>
  Instance.fromPartial({ service: "echo", instanceId: `echo-${i}`, address, weight: 1 }),
);
const balanced = (metrics, policy = "round_robin") =>
  createBalancedClient(EchoServiceService, {
    service: "echo",
    membership: staticMembership("echo", instances),
    policy,
    metrics,
  });
const leasehold = balanced(undefined);
const leaseholdWithMetrics = balanced(new ClientMetrics(new Registry()));
const stock = new EchoServiceClient(`ipv4:${addresses.join(",")}`, credentials.createInsecure(), {
  "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
});
const request = { message: "x" };
const variants = {
  leasehold: () => leasehold.methods.echo(request),
  "leasehold+metrics": () => leaseholdWithMetrics.methods.echo(request),
  "grpc-js": () =>
    new Promise((resolve, reject) =>
      stock.echo(request, { deadline: Date.now() + 5000 }, (error, response) =>
        error === null ? resolve(response) : reject(error),
      ),
    ),
};
for (const policy of POLICY_NAMES.filter((name) => name !== "round_robin" && name !== "ring_hash")) {
  const client = balanced(undefined, policy);
  variants[`leasehold:${policy}`] = () => client.methods.echo(request);
}

async function run(call, calls, concurrency) {
  let started = 0;
  let errors = 0;
  let firstError;
  const latencies = new Float64Array(calls);
  const worker = async () => {
    while (started < calls) {
      const i = started++;
      const began = performance.now();
      try {
        await call();
      } catch (error) {
        errors += 1;
        firstError ??= error.message;
      }
      latencies[i] = performance.now() - began;
    }
  };
  const cpu = process.cpuUsage();
  const began = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const wallMs = performance.now() - began;
  const { user, system } = process.cpuUsage(cpu);
  latencies.sort();
  const at = (q) => latencies[Math.min(calls - 1, Math.ceil(q * calls) - 1)];
  return { calls, wallMs, cpuUs: user + system, errors, firstError, p50Ms: at(0.5), p99Ms: at(0.99) };
}

process.stdout.write("ready\n");
let queue = Promise.resolve();
createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, variant, calls, concurrency] = line.split(" ");
  if (command !== "run") return;
  queue = queue.then(async () => {
    const result = await run(variants[variant], Number(calls), Number(concurrency));
    process.stdout.write(`result ${JSON.stringify(result)}\n`);
  });
});
process.stdin.on("end", () => process.exit(0));
