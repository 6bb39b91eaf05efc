/**
 * deploy/ and grafana/ checked without Docker: Debian's docker-compose validates the compose file,
 * promtool the Prometheus config and rules, and a real Prometheus (Debian's `prometheus` 2.42),
 * running deploy/prometheus.yml against fixture targets that export every DESIGN §7 metric,
 * evaluates every dashboard query. Needs the Debian packages `docker-compose` and `prometheus`.
 */
import anyTest, { type TestFn } from "ava";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { copyFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { freePort } from "../cli/local-etcd.js";
import { eventually } from "./helpers/eventually.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const composeFile = join(root, "deploy/docker-compose.yml");
const prometheusConfigFile = join(root, "deploy/prometheus.yml");
const rulesFile = join(root, "deploy/rules.yml");
const rulesTestFile = join(root, "deploy/rules.test.yml");
const dashboardFile = join(root, "grafana/dashboards/leasehold.json");

/** DESIGN §7 metric names; histograms also expose `_bucket`, `_sum` and `_count`. */
const designCounters = [
  "leasehold_client_requests_total",
  "leasehold_client_calls_total",
  "leasehold_client_membership_events_total",
  "leasehold_registry_registrations_total",
  "grpc_server_handled_total",
];
const designGauges = [
  "leasehold_client_breaker_state",
  "leasehold_client_instances",
  "leasehold_client_membership_stale_seconds",
  "leasehold_registry_instances",
  "leasehold_registry_watch_streams",
];
const designHistograms = [
  "leasehold_client_request_duration_seconds",
  "leasehold_registry_etcd_request_duration_seconds",
  "grpc_server_handling_seconds",
];
const allowedMetricNames = new Set([
  ...designCounters,
  ...designGauges,
  ...designHistograms.flatMap((name) => [`${name}_bucket`, `${name}_sum`, `${name}_count`]),
  "up", // Prometheus' own per-target series
]);
const isAllowedMetric = (name: string): boolean =>
  allowedMetricNames.has(name) || /^(process|nodejs)_[a-z0-9_]+$/.test(name);

/** Labels §7 metrics carry, plus the ones Prometheus or deploy/prometheus.yml add. */
const allowedLabels = new Set([
  ...["service", "instance_id", "method", "code", "status", "type", "result", "op", "zone"],
  ...["grpc_service", "grpc_method", "grpc_code", "le", "job", "replica", "__name__"],
]);

// ---- the dashboard, read once so each panel gets its own test ----

interface DashboardTarget {
  refId: string;
  expr?: string;
  legendFormat?: string;
  datasource?: { type?: string; uid?: string };
}
interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  gridPos?: { h: number; w: number; x: number; y: number };
  datasource?: { type?: string; uid?: string };
  targets?: DashboardTarget[];
  panels?: DashboardPanel[];
}
interface DashboardVariable {
  name: string;
  type: string;
  definition?: string;
  query?: string | { query?: string };
}
interface Dashboard {
  uid: string;
  title: string;
  panels: DashboardPanel[];
  templating: { list: DashboardVariable[] };
}

const dashboard = JSON.parse(await readFile(dashboardFile, "utf8")) as Dashboard;
const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
const queryPanels = panels.filter((panel) => panel.type !== "row");
const panelQueries = queryPanels.flatMap((panel) =>
  (panel.targets ?? []).map((target) => ({ panel, target, expr: target.expr ?? "" })),
);

/** Grafana's substitutions, as Grafana makes them for "All" of a multi-value `$service`. */
function substitute(expr: string): string {
  return expr
    .replaceAll(/\$\{service(?::\w+)?\}|\$service\b/g, "calculator|echo")
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__interval", "5s")
    .replaceAll("$__range", "5m");
}

/** The series selector inside Grafana's `label_values(SELECTOR, label)`. */
function variableSelector(variable: DashboardVariable): { selector: string; label: string } | undefined {
  const query = typeof variable.query === "string" ? variable.query : (variable.query?.query ?? "");
  const match = /^label_values\((.+),\s*(\w+)\)$/.exec(query.trim());
  return match?.[1] === undefined || match[2] === undefined
    ? undefined
    : { selector: match[1], label: match[2] };
}

// ---- a small PromQL reader: metric names and label names an expression uses ----

const promqlKeywords = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool"]);
const promqlKeywordsCaseless = new Set(["and", "or", "unless", "offset", "inf", "nan", "atan2"]);

function withoutStrings(expr: string): string {
  return expr.replaceAll(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
}

/** Metric names selected by `expr` (identifiers that are not functions, keywords or labels). */
function metricNames(expr: string): string[] {
  const stripped = withoutStrings(expr)
    .replaceAll(/\{[^}]*\}/g, " ")
    .replaceAll(/\[[^\]]*\]/g, " ")
    .replaceAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names: string[] = [];
  for (const match of stripped.matchAll(/(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const name = match[0];
    const rest = stripped.slice(match.index + name.length);
    if (/^\s*\(/.test(rest)) continue; // a function call
    if (promqlKeywords.has(name) || promqlKeywordsCaseless.has(name.toLowerCase())) continue;
    names.push(name);
  }
  return names;
}

/** Label names used in matchers and in by/without/on/ignoring/group_* clauses. */
function labelNames(expr: string): string[] {
  const text = withoutStrings(expr);
  const names: string[] = [];
  for (const braces of text.matchAll(/\{([^}]*)\}/g)) {
    for (const matcher of (braces[1] ?? "").matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)) {
      if (matcher[1] !== undefined) names.push(matcher[1]);
    }
  }
  for (const clause of text.matchAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)) {
    for (const label of (clause[1] ?? "").split(",")) if (label.trim() !== "") names.push(label.trim());
  }
  return names;
}

// ---- tools ----

const execFileAsync = promisify(execFile);

/** Runs a tool; a missing tool fails with the Debian package that provides it. */
async function run(
  command: string,
  args: string[],
  debianPackage: string,
): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { cwd: root, timeout: 30_000 });
    return { ok: true, output: `${stdout}${stderr}` };
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (failure.code === "ENOENT") {
      throw new Error(`${command} is not installed: apt-get install ${debianPackage}`, { cause: error });
    }
    return { ok: false, output: `${failure.stdout ?? ""}${failure.stderr ?? ""}${failure.message}` };
  }
}

// ---- fixture targets exporting every §7 metric, with values that move on every scrape ----

interface Fixture {
  readonly port: number;
  close(): Promise<void>;
}

async function serveFixture(
  registry: Registry,
  onScrape: () => void,
  extraRoutes: Record<string, () => unknown> = {},
): Promise<Fixture> {
  const server: Server = createServer((request, response) => {
    const route = extraRoutes[request.url ?? ""];
    if (route !== undefined) {
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(route()));
      return;
    }
    if (request.url !== "/metrics") {
      response.writeHead(404).end();
      return;
    }
    onScrape();
    registry.metrics().then(
      (text) => response.writeHead(200, { "content-type": registry.contentType }).end(text),
      (error: unknown) => response.writeHead(500).end(String(error)),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function grpcServerMetrics(registry: Registry, grpcService: string, grpcMethod: string): () => void {
  const labelNames = ["grpc_service", "grpc_method", "grpc_code"] as const;
  const handled = new Counter({
    name: "grpc_server_handled_total",
    help: "h",
    labelNames,
    registers: [registry],
  });
  const seconds = new Histogram({
    name: "grpc_server_handling_seconds",
    help: "h",
    labelNames: ["grpc_service", "grpc_method"],
    registers: [registry],
  });
  return () => {
    const labels = { grpc_service: grpcService, grpc_method: grpcMethod };
    handled.inc({ ...labels, grpc_code: "OK" }, 10);
    handled.inc({ ...labels, grpc_code: "Unavailable" });
    seconds.observe(labels, 0.002);
    seconds.observe(labels, 0.04);
  };
}

/** A registry replica: registry metrics, its gRPC server metrics and the HTTP SD list. */
async function registryFixture(servicesPort: number): Promise<Fixture> {
  const registry = new Registry();
  const instances = new Gauge({
    name: "leasehold_registry_instances",
    help: "h",
    labelNames: ["service"],
    registers: [registry],
  });
  const streams = new Gauge({ name: "leasehold_registry_watch_streams", help: "h", registers: [registry] });
  const registrations = new Counter({
    name: "leasehold_registry_registrations_total",
    help: "h",
    labelNames: ["result"],
    registers: [registry],
  });
  const etcdSeconds = new Histogram({
    name: "leasehold_registry_etcd_request_duration_seconds",
    help: "h",
    labelNames: ["op"],
    registers: [registry],
  });
  const grpc = grpcServerMetrics(registry, "leasehold.registry.v1.RegistryService", "Register");
  const instance = (service: string, instanceId: string, zone = "") => ({
    targets: [`127.0.0.1:${servicesPort}`],
    labels: { service, instance_id: instanceId, zone },
  });
  return await serveFixture(
    registry,
    () => {
      instances.set({ service: "calculator" }, 3);
      instances.set({ service: "echo" }, 2);
      streams.set(4);
      registrations.inc({ result: "ok" });
      registrations.inc({ result: "already_exists" });
      etcdSeconds.observe({ op: "txn" }, 0.003);
      etcdSeconds.observe({ op: "lease_grant" }, 0.001);
      grpc();
    },
    {
      "/sd/prometheus": () => [
        instance("calculator", "calc-1"),
        instance("calculator", "calc-2", "zone-b"),
        instance("echo", "echo-1"),
        // The registry lists itself too; deploy/prometheus.yml scrapes replicas by name instead.
        {
          targets: [`127.0.0.1:${servicesPort}`],
          labels: { service: "leasehold-registry", instance_id: "r1" },
        },
      ],
    },
  );
}

/** A balanced caller's metrics for one service with three instances, one of them failing. */
async function clientFixture(service: string): Promise<Fixture> {
  const registry = new Registry();
  const labelNames = ["service", "instance_id", "method", "code"] as const;
  const requests = new Counter({
    name: "leasehold_client_requests_total",
    help: "h",
    labelNames,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "leasehold_client_request_duration_seconds",
    help: "h",
    labelNames: ["service", "instance_id", "method"],
    registers: [registry],
  });
  const breaker = new Gauge({
    name: "leasehold_client_breaker_state",
    help: "h",
    labelNames: ["service", "instance_id"],
    registers: [registry],
  });
  const instances = new Gauge({
    name: "leasehold_client_instances",
    help: "h",
    labelNames: ["service", "status"],
    registers: [registry],
  });
  const events = new Counter({
    name: "leasehold_client_membership_events_total",
    help: "h",
    labelNames: ["service", "type"],
    registers: [registry],
  });
  const stale = new Gauge({
    name: "leasehold_client_membership_stale_seconds",
    help: "h",
    labelNames: ["service"],
    registers: [registry],
  });
  const weights = [1, 2, 3];
  return await serveFixture(registry, () => {
    weights.forEach((weight, index) => {
      const instance_id = `${service}-${index + 1}`;
      requests.inc({ service, instance_id, method: "Add", code: "OK" }, 10 * weight);
      duration.observe({ service, instance_id, method: "Add" }, 0.001 * weight);
      breaker.set({ service, instance_id }, index === 0 ? 2 : 0);
    });
    requests.inc({ service, instance_id: `${service}-1`, method: "Add", code: "Unavailable" }, 2);
    instances.set({ service, status: "SERVING" }, 3);
    instances.set({ service, status: "DRAINING" }, 1);
    events.inc({ service, type: "added" });
    stale.set({ service }, 0);
  });
}

/** A service instance: only gRPC server metrics, no `service`/`instance_id` of its own. */
async function serviceInstanceFixture(): Promise<Fixture> {
  const registry = new Registry();
  return await serveFixture(
    registry,
    grpcServerMetrics(registry, "leasehold.demo.v1.CalculatorService", "Add"),
  );
}

/** deploy/prometheus.yml with its compose host names pointed at the fixtures on loopback. */
function loopbackConfig(config: string, ports: Record<string, number>): string {
  let result = config;
  const replace = (from: string | RegExp, to: string): void => {
    const next = result.replaceAll(from, to);
    if (next === result) {
      throw new Error(`deploy/prometheus.yml no longer contains ${String(from)}; update test/deploy.test.ts`);
    }
    result = next;
  };
  for (const [host, port] of Object.entries(ports)) replace(host, `127.0.0.1:${port}`);
  replace(/(scrape_interval|evaluation_interval|refresh_interval): 5s/g, "$1: 1s");
  return result;
}

// ---- one Prometheus for the live tests ----

interface Context {
  prometheusUrl: string;
}
const test = anyTest as TestFn<Context>;

/** Fixtures, Prometheus and its data dir, closed in reverse order after all tests (hooks have no t.teardown). */
const closers: Array<() => Promise<unknown>> = [];
test.after.always(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

test.before(async (t) => {
  const services = await serviceInstanceFixture();
  closers.push(() => services.close());
  const fixtures = {
    "registry-1:7101": await registryFixture(services.port),
    "registry-2:7101": await registryFixture(services.port),
    "client-calculator:9400": await clientFixture("calculator"),
    "client-echo:9400": await clientFixture("echo"),
  };
  for (const fixture of Object.values(fixtures)) closers.push(() => fixture.close());

  const dir = await mkdtemp(join(tmpdir(), "leasehold-prometheus-"));
  closers.push(() => rm(dir, { recursive: true, force: true }));
  const port = await freePort();
  const ports = {
    "registry:7101": fixtures["registry-1:7101"].port,
    ...Object.fromEntries(Object.entries(fixtures).map(([host, fixture]) => [host, fixture.port])),
    "localhost:9090": port,
  };
  await writeFile(
    join(dir, "prometheus.yml"),
    loopbackConfig(await readFile(prometheusConfigFile, "utf8"), ports),
  );
  await copyFile(rulesFile, join(dir, "rules.yml"));

  const child: ChildProcess = spawn(
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
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  closers.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
  });
  const failedToStart = new Promise<never>((_, reject) => {
    child.once("error", (error) =>
      reject(new Error(`cannot start prometheus (${error.message}): apt-get install prometheus`)),
    );
    child.once("exit", (code) => reject(new Error(`prometheus exited with ${code}: ${stderr.trim()}`)));
  });
  failedToStart.catch(() => undefined); // raced below; avoids an unhandled rejection after success

  const prometheusUrl = `http://127.0.0.1:${port}`;
  await Promise.race([
    eventually(async () => (await fetch(`${prometheusUrl}/-/ready`)).ok, {
      timeoutMs: 20_000,
      what: "prometheus /-/ready",
    }),
    failedToStart,
  ]);
  t.context = { prometheusUrl };
});

interface QueryResponse {
  status: "success" | "error";
  error?: string;
  data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> };
}

async function query(
  prometheusUrl: string,
  expr: string,
): Promise<{ httpStatus: number; body: QueryResponse }> {
  const response = await fetch(`${prometheusUrl}/api/v1/query`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ query: expr }),
  });
  return { httpStatus: response.status, body: (await response.json()) as QueryResponse };
}

/** Polls until `expr` parses and returns at least one series. */
async function seriesOf(prometheusUrl: string, expr: string): Promise<Array<Record<string, string>>> {
  const parsed = await query(prometheusUrl, expr);
  if (parsed.httpStatus !== 200) {
    throw new Error(
      `Prometheus rejected the query (HTTP ${parsed.httpStatus}: ${parsed.body.error}):\n${expr}`,
    );
  }
  return await eventually(
    async () => {
      const { body } = await query(prometheusUrl, expr);
      const result = body.data?.result ?? [];
      return result.length > 0 && result.map((sample) => sample.metric);
    },
    { timeoutMs: 20_000, intervalMs: 250, what: `a series from ${expr}` },
  );
}

// ---- static checks ----

test("docker-compose 1.29 accepts deploy/docker-compose.yml and it runs the whole system", async (t) => {
  const check = await run("docker-compose", ["-f", composeFile, "config", "-q"], "docker-compose");
  t.true(check.ok, check.output);
  const services = await run("docker-compose", ["-f", composeFile, "config", "--services"], "docker-compose");
  t.true(services.ok, services.output);
  const names = services.output.trim().split("\n").sort();
  for (const expected of ["etcd", "registry-1", "calc-1", "calc-2", "calc-3", "echo-1", "echo-2"]) {
    t.true(names.includes(expected), `service ${expected} missing from ${names.join(", ")}`);
  }
  t.true(names.includes("prometheus") && names.includes("grafana"));

  const resolved = await run("docker-compose", ["-f", composeFile, "config"], "docker-compose");
  const images = [...resolved.output.matchAll(/^\s+image: (\S+)$/gm)].map((match) => match[1] ?? "");
  t.true(
    images.some((image) => /^quay\.io\/coreos\/etcd:v3\.6\.\d+$/.test(image)),
    `etcd is not a pinned 3.6 image: ${images.join(", ")}`,
  );
  for (const image of images.filter((name) => name !== "leasehold:dev")) {
    t.regex(image, /:v?\d+\.\d+\.\d+$/, `image ${image} is not pinned to a release`);
  }
  t.regex(resolved.output, /--weight\n\s+- '1'[\s\S]*--weight\n\s+- '2'[\s\S]*--weight\n\s+- '3'/);
  t.regex(resolved.output, /weighted_round_robin/);
});

test("promtool accepts deploy/prometheus.yml and deploy/rules.yml, and the rule unit tests pass", async (t) => {
  for (const args of [
    ["check", "config", prometheusConfigFile],
    ["check", "rules", rulesFile],
    ["test", "rules", rulesTestFile],
  ]) {
    const result = await run("promtool", args, "prometheus");
    t.true(result.ok, `promtool ${args.join(" ")}:\n${result.output}`);
  }
});

test("no relabeling, rule or dashboard query uses a label named `instance` or writes `job`", async (t) => {
  const config = await readFile(prometheusConfigFile, "utf8");
  t.notRegex(config, /target_label:\s*["']?(instance|job)["']?\s*$/m);
  t.notRegex(config, /^\s+(instance|exported_instance):/m);
  const rules = await readFile(rulesFile, "utf8");
  t.notRegex(rules, /\$labels\.instance\b(?!_)/);
  t.false(labelNames(rules).includes("instance"), "rules.yml groups or matches by `instance`");
  for (const { panel, target, expr } of panelQueries) {
    t.false(labelNames(expr).includes("instance"), `panel "${panel.title}" uses label instance`);
    t.notRegex(target.legendFormat ?? "", /\{\{\s*instance\s*\}\}/, `panel "${panel.title}" legend`);
  }
});

test("the PromQL reader finds metric and label names (so the dashboard checks can fail)", (t) => {
  const expr =
    'histogram_quantile(0.99, sum by (service, le) (rate(foo_bucket{code!="OK", x=~"a|b"}[5m] offset 1m)))' +
    " / on (service) group_left sum by (service) (bar) and bool baz";
  t.deepEqual(metricNames(expr), ["foo_bucket", "bar", "baz"]);
  t.deepEqual(labelNames(expr).sort(), ["code", "le", "service", "service", "service", "x"]);
  t.deepEqual(metricNames('max by (instance) (up{job="x"})'), ["up"]);
  t.deepEqual(labelNames('max by (instance) (up{job="x"})'), ["job", "instance"]);
});

test("every dashboard query uses only DESIGN §7 metric names and their labels", (t) => {
  t.true(panelQueries.length >= 15, `only ${panelQueries.length} queries`);
  for (const { panel, expr } of panelQueries) {
    const names = metricNames(expr);
    t.true(names.length > 0, `panel "${panel.title}" selects no metric: ${expr}`);
    for (const name of names)
      t.true(isAllowedMetric(name), `panel "${panel.title}": ${name} is not a §7 metric`);
    for (const label of labelNames(expr)) {
      t.true(allowedLabels.has(label), `panel "${panel.title}": label ${label} is not a §7 label`);
    }
  }
  for (const variable of dashboard.templating.list) {
    const selector = variableSelector(variable);
    t.truthy(selector, `variable ${variable.name} is not label_values(...)`);
    for (const name of metricNames(selector?.selector ?? "")) t.true(isAllowedMetric(name), name);
  }
});

test("the dashboard is well formed: unique ids, the provisioned datasource, a $service variable", async (t) => {
  const ids = panels.map((panel) => panel.id);
  t.is(new Set(ids).size, ids.length, "duplicate panel ids");
  const datasources = await readFile(join(root, "grafana/provisioning/datasources/prometheus.yml"), "utf8");
  const uid = /^\s+uid:\s*(\S+)$/m.exec(datasources)?.[1];
  t.truthy(uid);
  for (const panel of queryPanels) {
    t.is(panel.datasource?.uid, uid, `panel "${panel.title}" datasource`);
    t.true((panel.targets ?? []).length > 0, `panel "${panel.title}" has no query`);
    const grid = panel.gridPos;
    t.true(grid !== undefined && grid.x + grid.w <= 24, `panel "${panel.title}" grid`);
  }
  t.true(
    dashboard.templating.list.some((variable) => variable.name === "service"),
    "no $service variable",
  );
  t.true(panelQueries.filter(({ expr }) => expr.includes("$service")).length >= 10, "panels ignore $service");
  const provider = await readFile(join(root, "grafana/provisioning/dashboards/leasehold.yml"), "utf8");
  const path = /^\s+path:\s*(\S+)$/m.exec(provider)?.[1];
  const compose = await readFile(composeFile, "utf8");
  t.true(compose.includes(`../grafana/dashboards:${path}`), `compose does not mount dashboards at ${path}`);
  t.true(compose.includes("../grafana/provisioning:/etc/grafana/provisioning"));
});

// ---- live checks against a real Prometheus running deploy/prometheus.yml ----

test("http_sd discovers instances from /sd/prometheus with their service and instance_id labels", async (t) => {
  const { prometheusUrl } = t.context;
  const targets = await seriesOf(prometheusUrl, 'up{job="leasehold-services"} == 1');
  await eventually(async () => (await seriesOf(prometheusUrl, 'up{job="leasehold-services"}')).length === 3, {
    what: "three instance targets",
  });
  const discovered = (await seriesOf(prometheusUrl, 'up{job="leasehold-services"}'))
    .map((labels) => `${labels["service"]}/${labels["instance_id"]}`)
    .sort();
  t.deepEqual(discovered, ["calculator/calc-1", "calculator/calc-2", "echo/echo-1"]);
  t.true(targets.length > 0);
  const handled = await seriesOf(prometheusUrl, 'grpc_server_handled_total{job="leasehold-services"}');
  t.true(handled.every((labels) => labels["instance_id"] !== undefined && labels["service"] !== undefined));
  // The registry's own per-service series keep their `service` label, and no label got renamed.
  const registered = await seriesOf(prometheusUrl, 'leasehold_registry_instances{job="leasehold-registry"}');
  t.deepEqual([...new Set(registered.map((labels) => labels["service"]))].sort(), ["calculator", "echo"]);
  t.true(
    registered.every((labels) => labels["replica"] !== undefined),
    "registry series carry `replica`",
  );
  const renamed = await query(
    prometheusUrl,
    'count({exported_service=~".+"} or {exported_instance_id=~".+"} or {exported_instance=~".+"} or {exported_job=~".+"})',
  );
  t.deepEqual(renamed.body.data?.result, []);
});

for (const { panel, target, expr } of panelQueries) {
  test(`panel "${panel.title}" (${target.refId}) parses in Prometheus and returns data`, async (t) => {
    const series = await seriesOf(t.context.prometheusUrl, substitute(expr));
    t.true(series.length > 0);
  });
}

for (const variable of dashboard.templating.list) {
  test(`variable $${variable.name} finds values`, async (t) => {
    const selector = variableSelector(variable);
    if (selector === undefined) return t.fail(`variable ${variable.name} is not label_values(...)`);
    const series = await seriesOf(
      t.context.prometheusUrl,
      `count by (${selector.label}) (${selector.selector})`,
    );
    t.deepEqual(series.map((labels) => labels[selector.label]).sort(), ["calculator", "echo"]);
  });
}

test("the rules evaluate without errors against live data", async (t) => {
  const { prometheusUrl } = t.context;
  await seriesOf(prometheusUrl, "service_instance_id:leasehold_client_requests:share1m");
  const response = await fetch(`${prometheusUrl}/api/v1/rules`);
  const body = (await response.json()) as {
    data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> };
  };
  const rules = body.data.groups.flatMap((group) => group.rules);
  t.true(rules.length >= 5);
  for (const rule of rules) t.not(rule.health, "err", `${rule.name}: ${rule.lastError ?? ""}`);
  const shares = await seriesOf(
    prometheusUrl,
    'service_instance_id:leasehold_client_requests:share1m{service="calculator"}',
  );
  t.is(shares.length, 3);
});
