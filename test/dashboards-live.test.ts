import { execFile, spawn } from "node:child_process";
import { copyFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import anyTest, { type ExecutionContext, type TestFn } from "ava";
import { freePort, startLocalEtcd } from "../cli/local-etcd.js";
import { spawnCli } from "./helpers/cli.js";
import { eventually } from "./helpers/eventually.js";

/**
 * The Grafana dashboard and the alert rules, proven against a real Prometheus that runs the
 * deployed config (deploy/prometheus.yml, host names pointed at loopback) and scrapes LIVE
 * Leasehold processes: a registry (HTTP SD), calculator instances weighted 1:2:3, echo instances of
 * which one fails 30 % of calls, and two `leasehold call` load runs that list their /metrics in the
 * registry. No fixture exporter: every series comes from the real code paths.
 */
const root = fileURLToPath(new URL("..", import.meta.url));
const dashboard = JSON.parse(await readFile(join(root, "grafana/dashboards/leasehold.json"), "utf8")) as {
  panels: Array<{ type: string; title: string; targets?: Array<{ refId: string; expr: string }> }>;
  templating: { list: Array<{ name: string; type: string; query?: { query?: string } | string }> };
};

const execFileAsync = promisify(execFile);

interface Context {
  /** Prometheus on deploy/prometheus.yml (the all-in-compose flow). */
  prometheusUrl: string;
  /** Prometheus on deploy/prometheus.host.yml, the file Compose mounts for the host flow. */
  hostFlowPrometheusUrl: string;
  /** The registry's admin address, host:port. */
  admin: string;
}
const test = anyTest as TestFn<Context>;

/** A loaded 2-core CI machine starts a dozen node processes slowly: waits are generous. */
const LOADED_MACHINE_MS = 90_000;
/** Stands in for Grafana's `$__rate_interval` at a 1 s scrape interval. */
const RATE_INTERVAL = "20s";

const closers: Array<() => Promise<unknown>> = [];
test.after.always(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
});

/** `t` for the processes of the whole file: teardown at the end (ava's hooks have no t.teardown). */
function hookContext(t: ExecutionContext<Context>): ExecutionContext<Context> {
  return { ...t, teardown: (fn: () => unknown) => void closers.push(async () => await fn()) };
}

test.before(async (t) => {
  const scope = hookContext(t);
  const etcd = await startLocalEtcd();
  closers.push(() => etcd.stop());
  const registry = spawnCli(scope, [
    "registry",
    "--listen=127.0.0.1:0",
    `--etcd=${etcd.endpoint}`,
    "--admin-listen=127.0.0.1:0",
  ]);
  const line = await registry.waitForLine(/registry listening on/, LOADED_MACHINE_MS);
  const address = /listening on (\S+)/.exec(line)?.[1] ?? "";
  const admin = /admin http:\/\/(\S+?)\)/.exec(line)?.[1] ?? "";
  const registryFlag = `--registry=${address}`;
  const serve = (service: string, id: string, ...flags: string[]) =>
    spawnCli(scope, [
      "serve",
      service,
      registryFlag,
      `--id=${id}`,
      "--listen=127.0.0.1:0",
      "--metrics-listen=127.0.0.1:0",
      "--ttl=3",
      ...flags,
    ]);
  const instances = [
    serve("calculator", "calc-1", "--weight=1"),
    serve("calculator", "calc-2", "--weight=2"),
    serve("calculator", "calc-3", "--weight=3"),
    serve("echo", "echo-1"),
    serve("echo", "echo-2", "--fail-rate=0.3"),
  ];
  for (const instance of instances) await instance.waitForLine(/serving/, LOADED_MACHINE_MS);
  const call = (service: string, method: string, request: string, policy: string) =>
    spawnCli(scope, [
      "call",
      service,
      method,
      request,
      registryFlag,
      `--policy=${policy}`,
      "--duration=600",
      "--concurrency=2",
      "--metrics-listen=127.0.0.1:0",
    ]);
  call("calculator", "Add", '{"a":1,"b":2}', "weighted_round_robin");
  call("echo", "Echo", '{"message":"hi"}', "round_robin");

  const prometheus = async (configFile: string): Promise<string> =>
    await startPrometheus(
      loopbackConfig(await readFile(join(root, configFile), "utf8"), admin, etcd.endpoint),
    );
  const prometheusUrl = await prometheus("deploy/prometheus.yml");
  const hostFlowPrometheusUrl = await prometheus("deploy/prometheus.host.yml");
  t.context = { prometheusUrl, hostFlowPrometheusUrl, admin };
  // Every target up in both: the registry, 5 instances and 2 callers (all discovered through
  // /sd/prometheus but the registry), then enough scrapes for a 20 s rate.
  for (const url of [prometheusUrl, hostFlowPrometheusUrl]) {
    await eventually(async () => (await series(url, 'up{job=~"leasehold-.+"} == 1')).length === 8, {
      timeoutMs: LOADED_MACHINE_MS,
      what: `8 leasehold targets up in ${url}`,
    });
    await eventually(
      async () =>
        (await series(url, `count_over_time(leasehold_client_calls_total{service="echo"}[${RATE_INTERVAL}])`))
          .map((labels) => Number(labels["value"]))
          .some((count) => count >= 15),
      { timeoutMs: LOADED_MACHINE_MS, what: `15 scrapes of the callers in ${url}` },
    );
  }
});

/**
 * Runs the real Prometheus on `config` (rules.yml next to it) on a free loopback port until the
 * file's teardown; resolves its URL once it is ready.
 */
async function startPrometheus(config: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "leasehold-dashboards-"));
  closers.push(() => rm(dir, { recursive: true, force: true }));
  const port = await freePort();
  await writeFile(join(dir, "prometheus.yml"), config.replaceAll('"localhost:9090"', `"127.0.0.1:${port}"`));
  await copyFile(join(root, "deploy/rules.yml"), join(dir, "rules.yml"));
  const prometheus = spawn(
    "prometheus",
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  prometheus.stderr
    .setEncoding("utf8")
    .on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-4000)));
  const exited = new Promise<void>((resolve) => prometheus.once("exit", () => resolve()));
  prometheus.once("error", () => undefined);
  closers.push(async () => {
    if (prometheus.exitCode === null && prometheus.signalCode === null) prometheus.kill("SIGTERM");
    await exited;
  });
  const prometheusUrl = `http://127.0.0.1:${port}`;
  await eventually(async () => (await fetch(`${prometheusUrl}/-/ready`)).ok, {
    timeoutMs: 30_000,
    what: `prometheus /-/ready (stderr: ${stderr})`,
  });
  return prometheusUrl;
}

/**
 * A deployed Prometheus config pointed at this test, with 1 s scrapes: deploy/prometheus.yml's
 * compose host names, or deploy/prometheus.host.yml's host.docker.internal (the host flow, where
 * Compose maps that name to the host) become the registry's admin address, etcd's and loopback.
 */
function loopbackConfig(config: string, admin: string, etcdEndpoint: string): string {
  let result = config;
  const replace = (from: string | RegExp, to: string): void => {
    const next = result.replaceAll(from, to);
    if (next === result) throw new Error(`the Prometheus config no longer contains ${String(from)}`);
    result = next;
  };
  if (result.includes("host.docker.internal")) {
    replace('["host.docker.internal:7101"]', `["${admin}"]`);
    replace("http://host.docker.internal:7101/sd/prometheus", `http://${admin}/sd/prometheus`);
    replace("host.docker.internal", "127.0.0.1");
  } else {
    replace('["registry-1:7101", "registry-2:7101"]', `["${admin}"]`);
    replace("http://registry:7101/sd/prometheus", `http://${admin}/sd/prometheus`);
  }
  replace('"etcd:2381"', `"${new URL(etcdEndpoint).host}"`);
  replace(/(scrape_interval|evaluation_interval|refresh_interval): 5s/g, "$1: 1s");
  return result;
}

/** The result of an instant query, each series' labels plus its `value`. */
async function series(prometheusUrl: string, expr: string): Promise<Array<Record<string, string>>> {
  const response = await fetch(`${prometheusUrl}/api/v1/query`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ query: expr }),
  });
  const body = (await response.json()) as {
    status: string;
    error?: string;
    data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
  };
  if (body.status !== "success") throw new Error(`${expr}: ${body.error ?? response.status}`);
  return (body.data?.result ?? []).map(({ metric, value }) => ({ ...metric, value: value[1] }));
}

/** A panel query as Grafana sends it for one service. */
function forService(expr: string, service: string): string {
  return expr.replaceAll("$__rate_interval", RATE_INTERVAL).replaceAll('=~"$service"', `="${service}"`);
}

const byInstance = (rows: Array<Record<string, string>>): Record<string, number> =>
  Object.fromEntries(rows.map((row) => [row["instance_id"] ?? "", Number(row["value"])]));

/** Each test below runs against both Prometheus configs, the all-in-compose one and the host flow's. */
const flows = [
  { name: "deploy/prometheus.yml", url: (context: Context) => context.prometheusUrl },
  {
    name: "host flow (deploy/prometheus.host.yml)",
    url: (context: Context) => context.hostFlowPrometheusUrl,
  },
];

for (const flow of flows) {
  test(`${flow.name}: every target is discovered: the registry, 5 instances and both callers (through their leasehold-caller entries)`, async (t) => {
    const up = await series(flow.url(t.context), 'up{job=~"leasehold-.+"}');
    const names = up
      .map(
        (labels) =>
          `${labels["job"]} ${labels["service"] ?? ""}/${labels["instance_id"] ?? labels["caller"] ?? ""}`,
      )
      .sort();
    t.is(names.filter((name) => name.startsWith("leasehold-client ")).length, 2, names.join(", "));
    t.deepEqual(
      names.filter((name) => name.startsWith("leasehold-services ")),
      [
        "leasehold-services calculator/calc-1",
        "leasehold-services calculator/calc-2",
        "leasehold-services calculator/calc-3",
        "leasehold-services echo/echo-1",
        "leasehold-services echo/echo-2",
      ],
    );
    const renamed = await series(
      flow.url(t.context),
      'count({exported_service=~".+"} or {exported_instance_id=~".+"} or {exported_job=~".+"})',
    );
    t.deepEqual(renamed, [], "no scraped label was renamed");
  });

  test(`${flow.name}: share versus expected share: weights 1:2:3 give 1/6, 2/6, 3/6 within 5 %, drawn from the same panel`, async (t) => {
    const panel = dashboard.panels.find((p) => p.title === "Share versus expected share");
    const [share, expected] = panel?.targets ?? [];
    if (share === undefined || expected === undefined) return t.fail("the panel has two queries");
    const shares = byInstance(await series(flow.url(t.context), forService(share.expr, "calculator")));
    const expectedShares = byInstance(
      await series(flow.url(t.context), forService(expected.expr, "calculator")),
    );
    t.deepEqual(Object.keys(shares).sort(), ["calc-1", "calc-2", "calc-3"]);
    for (const [id, weight] of [
      ["calc-1", 1],
      ["calc-2", 2],
      ["calc-3", 3],
    ] as const) {
      t.is(expectedShares[id], weight / 6, `${id} expected`);
      const measured = shares[id] ?? 0;
      t.log(`${id}: share ${measured.toFixed(4)}, expected ${(weight / 6).toFixed(4)}`);
      t.true(Math.abs(measured - weight / 6) <= 0.05 * (weight / 6), `${id}: ${measured} vs ${weight / 6}`);
    }
  });
}

test("host flow: deploy/prometheus.host.yml dials every loopback target from /sd/prometheus at host.docker.internal (promtool check service-discovery)", async (t) => {
  // Only the SD URL points at this test's registry; the relabeling stays as Compose mounts it.
  const config = (await readFile(join(root, "deploy/prometheus.host.yml"), "utf8")).replaceAll(
    "http://host.docker.internal:7101/sd/prometheus",
    `http://${t.context.admin}/sd/prometheus`,
  );
  const dir = await mkdtemp(join(tmpdir(), "leasehold-sd-"));
  t.teardown(async () => await rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "prometheus.yml"), config);
  await writeFile(join(dir, "rules.yml"), "groups: []\n");
  for (const [job, expected] of [
    ["leasehold-services", 5],
    ["leasehold-client", 2],
  ] as const) {
    // promtool reports after --timeout (default 30 s); the registry answers at once.
    const { stdout } = await execFileAsync("promtool", [
      "check",
      "service-discovery",
      "--timeout=3s",
      join(dir, "prometheus.yml"),
      job,
    ]);
    const targets = JSON.parse(stdout) as Array<{ labels?: Record<string, string> }>;
    // A dropped target has no labels left.
    const addresses = targets.flatMap((target) => {
      const address = target.labels?.["__address__"];
      return address === undefined ? [] : [address];
    });
    t.is(addresses.length, expected, stdout);
    for (const address of addresses) t.regex(address, /^host\.docker\.internal:\d+$/, job);
  }
});

test("a 30 % failing instance whose failures retries hide: calls error ratio 0, attempts error ratio about 0.3 × its share, the alert silent", async (t) => {
  const { prometheusUrl } = t.context;
  const ratio = async (name: string): Promise<number> =>
    Number((await series(prometheusUrl, `${name}{service="echo"}`))[0]?.["value"] ?? NaN);
  t.is(await ratio("service:leasehold_client_errors:ratio_rate1m"), 0, "calls: what users saw");
  const attempts = await ratio("service:leasehold_client_attempt_errors:ratio_rate1m");
  const share = byInstance(
    await series(prometheusUrl, 'service_instance_id:leasehold_client_requests:share1m{service="echo"}'),
  )["echo-2"];
  if (share === undefined) return t.fail("no share for echo-2");
  const expected = 0.3 * share;
  // Runs of 5 failures (0.3^5 per attempt) open echo-2's breaker now and then; when that kept its
  // share near 0 for the whole minute, half of a near-zero expectation is below the scrape noise.
  t.true(
    Math.abs(attempts - expected) <= Math.max(0.5 * expected, 0.01),
    `attempt error ratio ${attempts} vs 0.3 × ${share}`,
  );
  const alerts = await series(prometheusUrl, 'ALERTS{alertname="LeaseholdClientErrorRatioHigh"}');
  t.deepEqual(alerts, [], "the error alert stays silent");
});

for (const panel of dashboard.panels.filter((p) => p.type !== "row")) {
  for (const target of panel.targets ?? []) {
    test(`panel "${panel.title}" (${target.refId}) returns series for the live system`, async (t) => {
      const service = target.expr.includes("breaker_rejections") ? "echo" : "calculator";
      const rows = await eventually(
        async () => {
          const found = await series(t.context.prometheusUrl, forService(target.expr, service));
          return found.length > 0 ? found : undefined;
        },
        { timeoutMs: 20_000, what: `series for ${panel.title}` },
      );
      t.true(rows.length > 0);
    });
  }
}

test("the $service variable lists the called services, not the caller entries", async (t) => {
  const variable = dashboard.templating.list.find((v) => v.name === "service");
  const query = typeof variable?.query === "string" ? variable.query : (variable?.query?.query ?? "");
  const selector = /^label_values\((.+), (\w+)\)$/.exec(query);
  if (selector === null) return t.fail(`not label_values(...): ${query}`);
  const values = await series(t.context.prometheusUrl, `count by (${selector[2]}) (${selector[1]})`);
  t.deepEqual(values.map((labels) => labels[selector[2] ?? ""]).sort(), ["calculator", "echo"]);
});

test("every recording and alerting rule evaluates without error against the live series", async (t) => {
  const response = await fetch(`${t.context.prometheusUrl}/api/v1/rules`);
  const body = (await response.json()) as {
    data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> };
  };
  const rules = body.data.groups.flatMap((group) => group.rules);
  t.true(rules.length >= 5);
  for (const rule of rules) t.not(rule.health, "err", `${rule.name}: ${rule.lastError ?? ""}`);
});
