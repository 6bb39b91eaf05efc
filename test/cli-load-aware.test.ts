/**
 * `leasehold serve --simulate-cpu` and `leasehold call --policy least_loaded` as real processes,
 * over a real etcd and registry.
 */
import { spawnCli } from "./helpers/cli.js";
import { testWithSharedFixture } from "./helpers/registry-fixture.js";

const test = testWithSharedFixture();

test("serve --simulate-cpu: least_loaded sends more calls to the instance reporting 20 % than to the one reporting 80 %", async (t) => {
  const registry = `--registry=${t.context.registry.address}`;
  for (const [id, cpu] of [
    ["low", "0.2"],
    ["high", "80%"],
  ] as const) {
    const serve = spawnCli(t, [
      "serve",
      "echo",
      registry,
      `--id=${id}`,
      `--simulate-cpu=${cpu}`,
      "--listen=127.0.0.1:0",
      "--advertise=auto",
      "--drain-ms=0",
    ]);
    await serve.waitForLine(/serving echo/);
  }
  const call = spawnCli(t, [
    "call",
    "echo",
    "Echo",
    '{"message":"m"}',
    registry,
    "--policy=least_loaded",
    "--duration=4",
    "--concurrency=1",
    "--json",
  ]);
  t.is(await call.exited, 0, call.stderr);
  const summary = JSON.parse(call.stdout.filter((line) => line.startsWith("{")).at(-1) ?? "{}") as {
    instances?: { instance_id: string; calls: number }[];
  };
  const calls = Object.fromEntries((summary.instances ?? []).map((i) => [i.instance_id, i.calls]));
  t.log(calls);
  // 4 : 1 once both reported and the picker was rebuilt (within ~1 s); about even before that.
  t.true((calls.low ?? 0) > 1.5 * (calls.high ?? 0), JSON.stringify(calls));
});

test("serve --simulate-cpu refuses a value outside 0..1 with one line and exit 2", async (t) => {
  const serve = spawnCli(t, [
    "serve",
    "echo",
    `--registry=${t.context.registry.address}`,
    "--simulate-cpu=120%",
  ]);
  t.is(await serve.exited, 2);
  t.regex(
    serve.stderr.trim(),
    /^error: option '--simulate-cpu <f\|min-max>' argument '120%' is invalid\. must be a fraction/,
  );
  t.is(serve.stderr.trim().split("\n").length, 1);
});
