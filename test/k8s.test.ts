/**
 * deploy/k8s checked offline: the kustomization is built (`kubectl kustomize` when installed, else
 * its `resources` resolved here), every object is validated against the Kubernetes JSON schemas
 * of the `kubernetes-models` package, and the properties operators rely on are asserted.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";
import { parseAllDocuments, parse } from "yaml";

const root = fileURLToPath(new URL("..", import.meta.url));
const k8sDir = join(root, "deploy/k8s");
const execFileAsync = promisify(execFile);

interface Container {
  name: string;
  image?: string;
  args?: string[];
  command?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath?: string } } }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  readinessProbe?: { httpGet?: { path?: string; port?: string | number }; grpc?: { port?: number } };
  livenessProbe?: { httpGet?: { path?: string; port?: string | number } };
  lifecycle?: { preStop?: { exec?: { command?: string[] } } };
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: {
    replicas?: number;
    minAvailable?: number | string;
    maxUnavailable?: number | string;
    selector?: { matchLabels?: Record<string, string> };
    template?: {
      metadata?: { labels?: Record<string, string> };
      spec?: { containers: Container[]; terminationGracePeriodSeconds?: number };
    };
  };
  data?: Record<string, string>;
}

/** The objects of a multi-document YAML text. */
function objects(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((document) => document.toJS() as K8sObject | null)
    .filter((object): object is K8sObject => object !== null);
}

/** The kustomization resolved here: its `resources` files, with its `namespace` set. */
async function resolveKustomization(): Promise<K8sObject[]> {
  const kustomization = parse(await readFile(join(k8sDir, "kustomization.yaml"), "utf8")) as {
    namespace?: string;
    resources: string[];
  };
  const resolved: K8sObject[] = [];
  for (const resource of kustomization.resources) {
    for (const object of objects(await readFile(join(k8sDir, resource), "utf8"))) {
      if (object.kind !== "Namespace" && kustomization.namespace !== undefined)
        object.metadata.namespace = kustomization.namespace;
      resolved.push(object);
    }
  }
  return resolved;
}

/** `kubectl kustomize deploy/k8s`, or undefined without kubectl. */
async function kubectlKustomize(): Promise<K8sObject[] | undefined> {
  try {
    const { stdout } = await execFileAsync("kubectl", ["kustomize", k8sDir], { timeout: 30_000 });
    return objects(stdout);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

const built = (await kubectlKustomize()) ?? (await resolveKustomization());
const find = (kind: string, name: string): K8sObject | undefined =>
  built.find((object) => object.kind === kind && object.metadata.name === name);
const container = (object: K8sObject | undefined): Container | undefined =>
  object?.spec?.template?.spec?.containers[0];

/** The kubernetes-models class for an object's apiVersion and kind (core `v1` lives at `v1/`). */
async function modelFor(object: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const module = (await import(`kubernetes-models/${object.apiVersion}/${object.kind}`)) as Record<
    string,
    new (data: unknown) => { validate(): void }
  >;
  const model = module[object.kind];
  if (model === undefined) throw new Error(`no model for ${object.apiVersion} ${object.kind}`);
  return model;
}

test("every object validates against the Kubernetes schemas (and the validator refuses a broken one)", async (t) => {
  t.true(built.length >= 10, `only ${built.length} objects`);
  for (const object of built) {
    const Model = await modelFor(object);
    t.notThrows(() => new Model(object).validate(), `${object.kind}/${object.metadata.name}`);
    if (object.kind !== "Namespace") t.is(object.metadata.namespace, "leasehold", object.metadata.name);
  }
  const broken = structuredClone(find("StatefulSet", "etcd")) as unknown as { spec: { replicas: unknown } };
  broken.spec.replicas = "3";
  const Model = await modelFor(find("StatefulSet", "etcd") as K8sObject);
  t.throws(() => new Model(broken).validate(), { message: /replicas must be integer/ });
});

test("the resources resolved here are the ones kubectl kustomize builds", async (t) => {
  const kubectl = await kubectlKustomize();
  if (kubectl === undefined) return t.log("kubectl is not installed: resolved here only");
  const names = (list: K8sObject[]): string[] =>
    list.map((object) => `${object.kind}/${object.metadata.namespace ?? ""}/${object.metadata.name}`).sort();
  t.deepEqual(names(await resolveKustomization()), names(kubectl));
});

test("etcd is a 3-member StatefulSet whose members name each other through the headless Service", (t) => {
  const etcd = find("StatefulSet", "etcd");
  t.is(etcd?.spec?.replicas, 3);
  const command = (container(etcd)?.command ?? []).join(" ");
  t.regex(
    command,
    /--initial-cluster=etcd-0=http:\/\/etcd-0\.etcd:2380,etcd-1=http:\/\/etcd-1\.etcd:2380,etcd-2=http:\/\/etcd-2\.etcd:2380/,
  );
  t.regex(container(etcd)?.image ?? "", /^quay\.io\/coreos\/etcd:v3\.6\.\d+$/);
  const service = find("Service", "etcd") as unknown as { spec: { clusterIP?: string } } | undefined;
  t.is(service?.spec.clusterIP, "None");
});

test("the registry: 2+ replicas, readiness and liveness on the admin port, a PodDisruptionBudget that selects it", (t) => {
  const registry = find("Deployment", "registry");
  t.true((registry?.spec?.replicas ?? 0) >= 2);
  const main = container(registry);
  const admin = main?.ports?.find((port) => port.name === "admin");
  t.is(admin?.containerPort, 7101);
  t.true((main?.args ?? []).includes("--admin-listen=0.0.0.0:7101"));
  t.deepEqual(main?.readinessProbe?.httpGet, { path: "/readyz", port: "admin" });
  t.deepEqual(main?.livenessProbe?.httpGet, { path: "/healthz", port: "admin" });
  const budget = find("PodDisruptionBudget", "registry");
  t.deepEqual(budget?.spec?.selector?.matchLabels, { "app.kubernetes.io/name": "registry" });
  t.like(registry?.spec?.template?.metadata?.labels ?? {}, budget?.spec?.selector?.matchLabels ?? {});
  t.is(budget?.spec?.minAvailable, 1);
});

test("the demo service advertises status.podIP, drains in preStop, and its grace period outlasts the drain", (t) => {
  const calculator = find("Deployment", "calculator");
  const main = container(calculator);
  const podIp = main?.env?.find((variable) => variable.name === "POD_IP");
  t.is(podIp?.valueFrom?.fieldRef?.fieldPath, "status.podIP");
  t.true((main?.args ?? []).includes("--advertise=$(POD_IP):7200"));
  t.truthy(main?.lifecycle?.preStop?.exec?.command, "no preStop");
  const drainMs = Number(
    /^--drain-ms=(\d+)$/.exec((main?.args ?? []).find((a) => a.startsWith("--drain-ms=")) ?? "")?.[1],
  );
  t.true(drainMs > 0, "no --drain-ms");
  // The drain, then the gRPC server's graceful stop (at most 5 s: services/service-host.ts).
  const graceSeconds = calculator?.spec?.template?.spec?.terminationGracePeriodSeconds ?? 30;
  t.true(graceSeconds > drainMs / 1000 + 5, `grace ${graceSeconds} s vs drain ${drainMs} ms + 5 s`);
});

test("the Prometheus ConfigMap passes promtool and discovers through the registry's HTTP SD", async (t) => {
  const config = find("ConfigMap", "prometheus")?.data?.["prometheus.yml"] ?? "";
  t.regex(config, /url: http:\/\/registry:7101\/sd\/prometheus/);
  // The jobs of deploy/prometheus.yml, so the dashboard and rules.yml work unchanged.
  const jobs = (text: string) =>
    (parse(text) as { scrape_configs: Array<{ job_name: string }> }).scrape_configs.map(
      (job) => job.job_name,
    );
  const composeJobs = jobs(await readFile(join(root, "deploy/prometheus.yml"), "utf8"));
  t.deepEqual(
    jobs(config),
    composeJobs.filter((job) => job !== "prometheus"),
  );
  t.notRegex(config, /target_label:\s*["']?(instance|job)["']?\s*$/m);
  const dir = await mkdtemp(join(tmpdir(), "leasehold-k8s-"));
  t.teardown(async () => await rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "prometheus.yml"), config);
  const { stdout, stderr } = await execFileAsync("promtool", [
    "check",
    "config",
    join(dir, "prometheus.yml"),
  ]);
  t.regex(`${stdout}${stderr}`, /SUCCESS/);
  const deployment = find("Deployment", "prometheus");
  t.notRegex((container(deployment)?.args ?? []).join(" "), /enable-lifecycle/);
});
