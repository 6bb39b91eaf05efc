import { existsSync } from "node:fs";
import test from "ava";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";

test.serial(
  "the demo runs its schedule, splits calculator traffic 1:2:3, exits 0 and leaves nothing behind",
  async (t) => {
    const demo = spawnCli(t, ["demo", "--duration", "14"]);
    t.is(await demo.exited, 0, demo.stderr.slice(-2000));
    const out = demo.stdout.join("\n");
    for (const id of ["calc-1", "calc-2", "calc-3", "echo-1", "echo-2"])
      t.regex(out, new RegExp(`\\+ added \\w+/${id} `));
    // Every change of the schedule, as callers saw it.
    t.regex(out, /\+ added calculator\/calc-4 .*weight=2/);
    t.regex(out, /! breaker of calculator\/calc-4 open/);
    t.regex(out, /- removed echo\/echo-2 /);
    t.regex(out, /\+ added echo\/echo-3 /);
    t.regex(out, /~ updated calculator\/calc-4 .*DRAINING/);
    t.regex(out, /- removed calculator\/calc-4 /);
    t.regex(out, /calls made, 0 failed after retries/);
    // kv: a put on a backup is redirected; after SIGKILL of the primary the next-oldest serves it.
    t.regex(out, /kv: kv-2 is a backup: redirected to the primary/);
    t.regex(out, /kv: greeting=hello read from the new primary kv-2/);
    const split = /^split calc-1:calc-2:calc-3 = ([\d.]+) : ([\d.]+) : ([\d.]+)/m.exec(out);
    t.truthy(split, "the final split is printed");
    t.is(Number(split?.[1]), 1);
    t.true(Math.abs(Number(split?.[2]) - 2) <= 0.1, `calc-2/calc-1 = ${split?.[2]}`);
    t.true(Math.abs(Number(split?.[3]) - 3) <= 0.15, `calc-3/calc-1 = ${split?.[3]}`);
    // Its etcd is gone with it.
    const endpoint = /etcd (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
    t.truthy(endpoint);
    await t.throwsAsync(fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(2000) }));
    // And so is its temporary log folder.
    const logDir = /process logs in (\S+)/.exec(out)?.[1];
    t.truthy(logDir);
    t.false(existsSync(logDir ?? ""), `${logDir} removed`);
  },
);

test.serial(
  "demo --metrics-listen 0.0.0.0:0 binds every /metrics it lists in /sd/prometheus on all interfaces (reachable from a container through the host gateway)",
  async (t) => {
    const demo = spawnCli(t, ["demo", "--duration", "12", "--metrics-listen", "0.0.0.0:0"]);
    const admin = /admin (http:\/\/\S+?)\/metrics/.exec(
      await demo.waitForLine(/registry .* admin http/),
    )?.[1];
    const client = /demo client metrics http:\/\/(\S+?)\/metrics/.exec(
      await demo.waitForLine(/demo client metrics http/),
    )?.[1];
    t.truthy(admin);
    t.truthy(client);
    // The client lists its external address; the instances, whose gRPC is on loopback, list
    // 127.0.0.1 (the registry wants /metrics on the host of the address), which
    // deploy/prometheus.host.yml dials at host.docker.internal. Either way the port answers on
    // the external address too: bound on 0.0.0.0, not loopback only.
    const externalHost = client?.replace(/:\d+$/, "") ?? "";
    t.not(externalHost, "0.0.0.0");
    // 5 instances and the client, once all are up.
    const listed = await eventually(
      async () => {
        const groups = (await (await fetch(`${admin}/sd/prometheus`)).json()) as Array<{
          targets: string[];
          labels: Record<string, string>;
        }>;
        const found = groups.filter((group) => group.labels["service"] !== "leasehold-registry");
        return found.length >= 6 ? found : undefined;
      },
      { timeoutMs: 20_000, what: "6 entries in /sd/prometheus" },
    );
    for (const group of listed) {
      const port = /:(\d+)$/.exec(group.targets[0] ?? "")?.[1] ?? "";
      const url = `http://${externalHost}:${port}/metrics`;
      t.true((await fetch(url)).ok, `${group.labels["instance_id"]}: ${url}`);
    }
    t.is(await demo.exited, 0, demo.stderr.slice(-2000));
  },
);
