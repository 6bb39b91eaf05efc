import { Server, ServerCredentials, type UntypedServiceImplementation } from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { service as healthService } from "grpc-health-check";
import { Backoff } from "../client/backoff.js";
import { TargetHealthWatcher, type TargetHealth } from "../cli/register/target-health.js";
import { eventually } from "./helpers/eventually.js";

/** A server whose health service answers `Check` only (Watch is UNIMPLEMENTED), as some older servers do. */
async function startCheckOnlyServer(t: ExecutionContext, current: () => string): Promise<string> {
  const server = new Server();
  const implementation: UntypedServiceImplementation = {
    Check: (_call: unknown, callback: (error: null, response: { status: string }) => void) =>
      callback(null, { status: current() }),
  };
  server.addService(healthService, implementation);
  t.teardown(() => server.forceShutdown());
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  return `127.0.0.1:${port}`;
}

test("a target without Health/Watch is polled with Check: NOT_SERVING, then SERVING", async (t) => {
  let status = "NOT_SERVING";
  const address = await startCheckOnlyServer(t, () => status);
  const seen: TargetHealth[] = [];
  const watcher = new TargetHealthWatcher({
    address,
    service: "",
    pollIntervalMs: 50,
    backoff: new Backoff({ initialDelayMs: 10, maxDelayMs: 50 }),
    changed: (health) => seen.push(health),
  });
  t.teardown(() => watcher.close());
  watcher.start();
  await eventually(() => seen.at(-1)?.reason === "NOT_SERVING", { what: "NOT_SERVING by Check" });
  t.false(seen.at(-1)?.isServing);
  status = "SERVING";
  await eventually(() => seen.at(-1)?.isServing === true, { what: "SERVING by Check" });
});

test("a target that is not there is not serving, with the cause, and the watcher keeps trying", async (t) => {
  const seen: TargetHealth[] = [];
  const watcher = new TargetHealthWatcher({
    address: "127.0.0.1:1",
    service: "",
    backoff: new Backoff({ initialDelayMs: 10, maxDelayMs: 50 }),
    changed: (health) => seen.push(health),
  });
  t.teardown(() => watcher.close());
  watcher.start();
  await eventually(() => seen.length > 0, { what: "a first report" });
  t.deepEqual(seen[0], { isServing: false, reason: "unreachable: connection refused" });
  await new Promise((resolve) => setTimeout(resolve, 300)); // several retries: the same cause is reported once
  t.is(seen.length, 1);
});
