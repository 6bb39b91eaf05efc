/**
 * deploy/ and grafana/ checked without Docker: Debian's docker-compose validates the compose file,
 * promtool the Prometheus config and rules, and a small PromQL reader the names every dashboard
 * query uses. test/dashboards-live.test.ts runs the same config and dashboard against a real
 * Prometheus scraping live Leasehold processes. Needs the Debian packages `docker-compose` and
 * `prometheus`.
 */
import test from "ava";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { parse } from "yaml";

const root = fileURLToPath(new URL("..", import.meta.url));
const composeFile = join(root, "deploy/docker-compose.yml");
const prometheusConfigFile = join(root, "deploy/prometheus.yml");
const hostPrometheusConfigFile = join(root, "deploy/prometheus.host.yml");
const dockerfile = join(root, "deploy/Dockerfile");
const rulesFile = join(root, "deploy/rules.yml");
const rulesTestFile = join(root, "deploy/rules.test.yml");
const dashboardFile = join(root, "grafana/dashboards/leasehold.json");

/** DESIGN §7 metric names (and the ones issues 6 and 9 added); histograms also expose `_bucket`, `_sum` and `_count`. */
const designCounters = [
  "leasehold_client_requests_total",
  "leasehold_client_calls_total",
  "leasehold_client_retries_total",
  "leasehold_client_breaker_rejections_total",
  "leasehold_client_membership_events_total",
  "leasehold_registry_registrations_total",
  "grpc_server_handled_total",
];
const designGauges = [
  "leasehold_client_breaker_state",
  "leasehold_client_instance_weight",
  "leasehold_client_outstanding_requests",
  "leasehold_client_panic_mode",
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
  ...["grpc_type", "grpc_service", "grpc_method", "grpc_code", "le", "job", "replica", "caller", "__name__"],
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
  repeat?: string;
  fieldConfig?: { defaults?: { custom?: { stacking?: { mode?: string } } } };
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
  __inputs?: Array<{ type: string; pluginId?: string }>;
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
  env: Record<string, string> = {},
): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, {
      cwd: root,
      timeout: 30_000,
      env: { ...process.env, ...env },
    });
    return { ok: true, output: `${stdout}${stderr}` };
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (failure.code === "ENOENT") {
      throw new Error(`${command} is not installed: apt-get install ${debianPackage}`, { cause: error });
    }
    return { ok: false, output: `${failure.stdout ?? ""}${failure.stderr ?? ""}${failure.message}` };
  }
}

// ---- static checks ----

// ---- compose ----

/** Every profile of deploy/docker-compose.yml; "" is none (etcd alone). */
const profiles = ["", "host", "all", "client", "cluster"] as const;
/** Grafana's admin password comes from the environment; compose refuses to start without it. */
const composeEnv = { GRAFANA_ADMIN_PASSWORD: "from-the-test" };

interface ComposeService {
  profiles?: string[];
  image?: string;
  command?: string[];
  ports?: Array<string | { published?: string | number; target?: number; host_ip?: string }>;
  volumes?: Array<string | { source?: string; target?: string }>;
  extra_hosts?: string[];
  healthcheck?: { test?: string[] | string; disable?: boolean };
  depends_on?: Record<string, unknown> | string[];
  environment?: Record<string, string | null>;
  deploy?: { replicas?: number };
  container_name?: string;
}

/** The compose file as docker-compose resolves it (anchors merged, variables interpolated). */
async function resolvedCompose(): Promise<Record<string, ComposeService>> {
  const resolved = await run("docker-compose", ["-f", composeFile, "config"], "docker-compose", composeEnv);
  if (!resolved.ok) throw new Error(resolved.output);
  return (parse(resolved.output) as { services: Record<string, ComposeService> }).services;
}

/** The services `docker compose --profile PROFILE up` starts (Compose v2 semantics). */
function activeServices(services: Record<string, ComposeService>, profile: string): string[] {
  return Object.entries(services)
    .filter(([, service]) => service.profiles === undefined || service.profiles.includes(profile))
    .map(([name]) => name)
    .sort();
}

const commandLine = (service: ComposeService | undefined): string => (service?.command ?? []).join(" ");

test("docker-compose 1.29 accepts deploy/docker-compose.yml under every profile, and refuses it without GRAFANA_ADMIN_PASSWORD", async (t) => {
  const combinations = [
    ...profiles.map((profile) => (profile === "" ? [] : [profile])),
    ["all", "cluster"],
    ["all", "client"],
  ];
  for (const combination of combinations) {
    const args = [
      "-f",
      composeFile,
      ...combination.flatMap((profile) => ["--profile", profile]),
      "config",
      "-q",
    ];
    const check = await run("docker-compose", args, "docker-compose", composeEnv);
    t.true(check.ok, `profiles [${combination.join(", ")}]: ${check.output}`);
  }
  const noPassword = await run("docker-compose", ["-f", composeFile, "config", "-q"], "docker-compose", {
    GRAFANA_ADMIN_PASSWORD: "",
  });
  t.false(noPassword.ok);
  t.regex(noPassword.output, /GRAFANA_ADMIN_PASSWORD/);
});

test("each profile starts a closed set: host is exactly etcd, Prometheus and Grafana; all is the whole system; cluster adds 3 etcd members", async (t) => {
  const services = await resolvedCompose();
  t.deepEqual(activeServices(services, "host"), ["etcd", "grafana", "prometheus"]);
  t.deepEqual(activeServices(services, ""), ["etcd"]);
  const all = activeServices(services, "all");
  for (const name of [
    "etcd",
    "registry-1",
    "registry-2",
    "calc-1",
    "calc-2",
    "calc-3",
    "calc",
    "echo",
    "kv-1",
    "kv-2",
    "kv-3",
  ])
    t.true(all.includes(name), `profile all lacks ${name}: ${all.join(", ")}`);
  for (const name of ["prometheus-compose", "grafana", "client-calculator", "client-echo"])
    t.true(all.includes(name));
  t.false(all.includes("prometheus"), "the host flow's Prometheus stays out of the all flow (port 9090)");
  t.deepEqual(
    activeServices(services, "cluster").filter((name) => name.startsWith("etcd-")),
    ["etcd-1", "etcd-2", "etcd-3"],
  );
  // `up etcd prometheus grafana` starts only those: none of them depends on anything else.
  for (const name of ["etcd", "prometheus", "grafana"]) t.is(services[name]?.depends_on, undefined, name);
  // Every dependency of a profile's service is started by that profile.
  for (const profile of profiles) {
    const active = new Set(activeServices(services, profile));
    for (const name of active) {
      const dependsOn = services[name]?.depends_on ?? [];
      for (const dependency of Array.isArray(dependsOn) ? dependsOn : Object.keys(dependsOn))
        t.true(active.has(dependency), `profile "${profile}": ${name} depends on ${dependency}`);
    }
  }
});

test("compose pins its images, and its calculators are weighted 1:2:3 with weighted_round_robin callers", async (t) => {
  const services = await resolvedCompose();
  const images = Object.values(services).map((service) => service.image ?? "");
  t.true(
    images.some((image) => /^quay\.io\/coreos\/etcd:v3\.6\.\d+$/.test(image)),
    `etcd is not a pinned 3.6 image: ${images.join(", ")}`,
  );
  for (const image of images.filter((name) => name !== "leasehold:dev")) {
    t.regex(image, /:v?\d+\.\d+\.\d+$/, `image ${image} is not pinned to a release`);
  }
  for (const [name, weight] of [
    ["calc-1", 1],
    ["calc-2", 2],
    ["calc-3", 3],
  ] as const) {
    t.regex(commandLine(services[name]), new RegExp(`--weight=${weight}\\b`), name);
  }
  t.regex(commandLine(services["client-calculator"]), /--policy=weighted_round_robin/);
});

test("the host flow: etcd published on 2379, Prometheus mounts deploy/prometheus.host.yml and maps host.docker.internal to the host gateway", async (t) => {
  const services = await resolvedCompose();
  t.true(
    (services["etcd"]?.ports ?? []).some((port) =>
      typeof port === "string"
        ? /(^|:)2379:2379(\/tcp)?$/.test(port)
        : String(port.published) === "2379" && port.target === 2379,
    ),
    JSON.stringify(services["etcd"]?.ports),
  );
  const prometheus = services["prometheus"];
  const mounts = (prometheus?.volumes ?? []).map((volume) =>
    typeof volume === "string" ? volume : `${volume.source ?? ""}:${volume.target ?? ""}`,
  );
  t.true(
    mounts.some((mount) => mount.startsWith(`${hostPrometheusConfigFile}:/etc/prometheus/prometheus.yml`)),
    mounts.join(", "),
  );
  t.true((prometheus?.extra_hosts ?? []).includes("host.docker.internal:host-gateway"));
  const hostConfig = await readFile(hostPrometheusConfigFile, "utf8");
  t.regex(hostConfig, /url: http:\/\/host\.docker\.internal:7101\/sd\/prometheus/);
});

test("compose operators can trust: a healthcheck on every service, no Prometheus lifecycle API, the Grafana password from env, a scalable calc", async (t) => {
  const services = await resolvedCompose();
  for (const [name, service] of Object.entries(services)) {
    const check = service.healthcheck?.test;
    if (name === "client") {
      t.deepEqual(check, ["NONE"], "a one-shot session serves nothing to check");
      continue;
    }
    t.true(Array.isArray(check) && check.length > 1 && check[0] !== "NONE", `${name} has no healthcheck`);
  }
  for (const name of ["prometheus", "prometheus-compose"]) {
    t.notRegex(commandLine(services[name]), /enable-lifecycle/, name);
  }
  t.is(services["grafana"]?.environment?.["GF_SECURITY_ADMIN_PASSWORD"], composeEnv.GRAFANA_ADMIN_PASSWORD);
  const calc = services["calc"];
  t.regex(commandLine(calc), /--id=calc-\{hostname\}/);
  t.regex(commandLine(calc), /--advertise=auto/);
  t.is(calc?.ports, undefined, "a published port would clash between replicas");
  t.is(calc?.container_name, undefined, "a container name would clash between replicas");
  t.deepEqual(services["client"]?.profiles, ["client"]);
  const cluster = ["etcd-1", "etcd-2", "etcd-3"].map((name) => commandLine(services[name]));
  for (const [index, command] of cluster.entries()) {
    t.regex(command, new RegExp(`--name=etcd-${index + 1} `));
    t.regex(
      command,
      /--initial-cluster=etcd-1=http:\/\/etcd-1:2380,etcd-2=http:\/\/etcd-2:2380,etcd-3=http:\/\/etcd-3:2380/,
    );
  }
});

test("the Dockerfile builds compiled JavaScript in stages with npm ci, runs as non-root under jemalloc, with a HEALTHCHECK", async (t) => {
  const text = await readFile(dockerfile, "utf8");
  t.true([...text.matchAll(/^FROM /gm)].length >= 2, "multi-stage");
  t.regex(text, /^RUN npm ci\b/m);
  t.regex(text, /^RUN npm run build$/m);
  t.notRegex(text, /\btsx\b/, "no TypeScript at run time");
  t.regex(text, /COPY --from=build \/app\/dist/);
  const user = [...text.matchAll(/^USER (\S+)$/gm)].at(-1)?.[1];
  t.truthy(user);
  t.not(user, "root");
  t.regex(text, /^HEALTHCHECK /m);
  t.regex(text, /apt-get install -y --no-install-recommends libjemalloc2/);
  t.regex(text, /ARG JEMALLOC=\/usr\/lib\/x86_64-linux-gnu\/libjemalloc\.so\.2/);
  t.regex(text, /ENV LD_PRELOAD=\$\{JEMALLOC\}/);
});

test("promtool accepts deploy/prometheus.yml, deploy/prometheus.host.yml and deploy/rules.yml, and the rule unit tests pass", async (t) => {
  for (const args of [
    ["check", "config", prometheusConfigFile],
    ["check", "config", hostPrometheusConfigFile],
    ["check", "rules", rulesFile],
    ["test", "rules", rulesTestFile],
  ]) {
    const result = await run("promtool", args, "prometheus");
    t.true(result.ok, `promtool ${args.join(" ")}:\n${result.output}`);
  }
});

test("no relabeling, rule or dashboard query uses a label named `instance` or writes `job`", async (t) => {
  for (const file of [prometheusConfigFile, hostPrometheusConfigFile]) {
    const config = await readFile(file, "utf8");
    t.notRegex(config, /target_label:\s*["']?(instance|job)["']?\s*$/m, file);
    t.notRegex(config, /^\s+(instance|exported_instance):/m, file);
  }
  const rules = await readFile(rulesFile, "utf8");
  t.notRegex(rules, /\$labels\.instance\b(?!_)/);
  t.false(labelNames(rules).includes("instance"), "rules.yml groups or matches by `instance`");
  for (const { panel, target, expr } of panelQueries) {
    t.false(labelNames(expr).includes("instance"), `panel "${panel.title}" uses label instance`);
    t.notRegex(target.legendFormat ?? "", /\{\{\s*instance\s*\}\}/, `panel "${panel.title}" legend`);
  }
});

test("no scrape job of deploy/prometheus.yml or deploy/prometheus.host.yml honors target labels (registered metrics addresses cannot inject labels)", async (t) => {
  for (const file of [prometheusConfigFile, hostPrometheusConfigFile]) {
    const config = await readFile(file, "utf8");
    t.notRegex(config, /^\s*honor_labels\s*:\s*true/m, file);
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
  for (const variable of dashboard.templating.list.filter(({ type }) => type === "query")) {
    const selector = variableSelector(variable);
    t.truthy(selector, `variable ${variable.name} is not label_values(...)`);
    for (const name of metricNames(selector?.selector ?? "")) t.true(isAllowedMetric(name), name);
  }
});

test("the dashboard is well formed: unique ids, a datasource variable with __inputs for import, one repeated row per service", async (t) => {
  const ids = panels.map((panel) => panel.id);
  t.is(new Set(ids).size, ids.length, "duplicate panel ids");
  const variables = dashboard.templating.list;
  t.true(
    variables.some((variable) => variable.name === "datasource" && variable.type === "datasource"),
    "no $datasource variable",
  );
  t.true(
    (dashboard.__inputs ?? []).some(
      (input) => input.type === "datasource" && input.pluginId === "prometheus",
    ),
    "no Prometheus datasource in __inputs",
  );
  for (const panel of queryPanels) {
    t.is(panel.datasource?.uid, "${datasource}", `panel "${panel.title}" datasource`);
    for (const target of panel.targets ?? []) t.is(target.datasource?.uid, "${datasource}", panel.title);
    t.true((panel.targets ?? []).length > 0, `panel "${panel.title}" has no query`);
    const grid = panel.gridPos;
    t.true(grid !== undefined && grid.x + grid.w <= 24, `panel "${panel.title}" grid`);
  }
  t.true(
    variables.some((variable) => variable.name === "service"),
    "no $service variable",
  );
  t.true(panelQueries.filter(({ expr }) => expr.includes("$service")).length >= 10, "panels ignore $service");
  const repeated = dashboard.panels.filter((panel) => panel.type === "row" && panel.repeat === "service");
  t.is(repeated.length, 1, "the load distribution row repeats per service");
  const share = queryPanels.find((panel) => panel.title === "Share versus expected share");
  t.not(
    share?.fieldConfig?.defaults?.custom?.stacking?.mode,
    "normal",
    "shares of different services never stack",
  );
  const provider = await readFile(join(root, "grafana/provisioning/dashboards/leasehold.yml"), "utf8");
  const path = /^\s+path:\s*(\S+)$/m.exec(provider)?.[1];
  const compose = await readFile(composeFile, "utf8");
  t.true(compose.includes(`../grafana/dashboards:${path}`), `compose does not mount dashboards at ${path}`);
  t.true(compose.includes("../grafana/provisioning:/etc/grafana/provisioning"));
});

test("deploy/prometheus.host.yml has deploy/prometheus.yml's jobs and rule files, so the dashboard and alerts serve both flows", async (t) => {
  const read = async (file: string) =>
    parse(await readFile(file, "utf8")) as {
      rule_files: string[];
      scrape_configs: Array<{ job_name: string }>;
    };
  const [compose, host] = [await read(prometheusConfigFile), await read(hostPrometheusConfigFile)];
  t.deepEqual(
    host.scrape_configs.map((job) => job.job_name),
    compose.scrape_configs.map((job) => job.job_name),
  );
  t.deepEqual(host.rule_files, compose.rule_files);
});
