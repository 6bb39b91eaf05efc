import { hostname } from "node:os";
import { routableHost } from "../client/server/routable-host.js";
import { InstanceStatus } from "../proto/gen/leasehold/registry/v1/registry.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";
import { rpc, testWithSharedFixture } from "./helpers/registry-fixture.js";

/** What compose's scalable `calc` and the Kubernetes Deployment rely on, through a real registry. */
const test = testWithSharedFixture();

test("serve --id calc-{hostname} --advertise auto registers under the host name at the detected address; SIGTERM drains before it deregisters", async (t) => {
  const api = rpc(t.context.client);
  const serve = spawnCli(t, [
    "serve",
    "calculator",
    `--registry=${t.context.registry.address}`,
    "--id=calc-{hostname}",
    "--advertise=auto",
    "--listen=0.0.0.0:0",
    "--metrics-listen=127.0.0.1:0",
    "--drain-ms=2000",
  ]);
  await serve.waitForLine(/serving/);
  const [instance] = (await api.getService({ service: "calculator" })).instances;
  t.is(instance?.instanceId, `calc-${hostname()}`);
  t.regex(instance?.address ?? "", new RegExp(`^${routableHost("0.0.0.0").replaceAll(".", "\\.")}:\\d+$`));

  // The drain as callers see it: listed DRAINING first, then gone.
  serve.child.kill("SIGTERM");
  const seen: string[] = [];
  await eventually(
    async () => {
      const [now] = (await api.getService({ service: "calculator" })).instances;
      const state =
        now === undefined
          ? "gone"
          : now.status === InstanceStatus.INSTANCE_STATUS_DRAINING
            ? "draining"
            : "serving";
      if (seen.at(-1) !== state) seen.push(state);
      return state === "gone";
    },
    { timeoutMs: 20_000, what: "the instance gone" },
  );
  t.deepEqual(
    seen.filter((state) => state !== "serving"),
    ["draining", "gone"],
  );
  t.is(await serve.exited, 0, serve.stderr.slice(-1000));
});
