// The caller of the per-call overhead benchmark, alone in its process so process.cpuUsage() is
// its own: unary Echo calls to the same instances through
//   "leasehold"          the balanced client (round_robin, no metrics; client/balancing/),
//   "leasehold+metrics"  the same with ClientMetrics (prom-client),
//   "grpc-js"            a stock grpc-js client, built-in round_robin over a static ipv4: target.
// Command `run VARIANT CALLS CONCURRENCY` → `result {"calls","wallMs","cpuUs","errors","firstError"}`.
import { credentials } from "@grpc/grpc-js";
import { createInterface } from "node:readline";
import { Registry } from "prom-client";
import { ClientMetrics, createBalancedClient, Instance, staticMembership } from "../../dist/client/index.js";
import { EchoServiceClient, EchoServiceService } from "../../dist/proto/gen/leasehold/demo/v1/echo.js";

const { addresses } = JSON.parse(process.argv[2]);
const instances = addresses.map((address, i) =>
  Instance.fromPartial({ service: "echo", instanceId: `echo-${i}`, address, weight: 1 }),
);
const balanced = (metrics) =>
  createBalancedClient(EchoServiceService, {
    service: "echo",
    membership: staticMembership("echo", instances),
    policy: "round_robin",
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

async function run(call, calls, concurrency) {
  let started = 0;
  let errors = 0;
  let firstError;
  const worker = async () => {
    while (started < calls) {
      started += 1;
      try {
        await call();
      } catch (error) {
        errors += 1;
        firstError ??= error.message;
      }
    }
  };
  const cpu = process.cpuUsage();
  const began = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const wallMs = performance.now() - began;
  const { user, system } = process.cpuUsage(cpu);
  return { calls, wallMs, cpuUs: user + system, errors, firstError };
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
