// The registry console: follows /ui/events (server-sent events) and renders services and instances.
// Plain browser JavaScript, no build step. Every value from the registry goes into the page through
// textContent, never as HTML (instance fields are chosen by whoever registers).

/** @type {Map<string, any>} service/instance_id → Instance (proto JSON) */
const instances = new Map();
const state = {
  revision: "0",
  isConnected: false,
  isStale: false,
  /** @type {{ready: boolean, panics: {service: string, untilUnixMs: number}[], callersInPanic: Record<string, number>}} */
  health: { ready: true, panics: [], callersInPanic: {} },
  /** @type {{observedAtUnixMs: number, instances: Record<string, any>}} */
  observations: { observedAtUnixMs: 0, instances: {} },
  filter: "",
};

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const keyOf = (instance) => `${instance.service}/${instance.instanceId}`;

function connect() {
  const source = new EventSource("/ui/events");
  source.addEventListener("open", () => {
    state.isConnected = true;
    render();
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (after the server's `retry`); a reconnect brings a new snapshot.
    state.isConnected = false;
    render();
  });
  // A large snapshot comes in parts (hasMore on all but the last): shown once whole.
  let snapshotParts;
  source.addEventListener("open", () => (snapshotParts = undefined));
  source.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    snapshotParts ??= new Map();
    for (const instance of snapshot.instances ?? []) snapshotParts.set(keyOf(instance), instance);
    if (snapshot.hasMore === true) return;
    instances.clear();
    for (const [key, instance] of snapshotParts) instances.set(key, instance);
    snapshotParts = undefined;
    state.revision = snapshot.revision ?? state.revision;
    state.isStale = false;
    render();
  });
  source.addEventListener("delta", (event) => {
    const delta = JSON.parse(event.data);
    for (const key of delta.removed ?? []) instances.delete(keyOf(key));
    for (const instance of delta.upserted ?? []) instances.set(keyOf(instance), instance);
    state.revision = delta.revision ?? state.revision;
    render();
  });
  source.addEventListener("progress", (event) => {
    const progress = JSON.parse(event.data);
    state.revision = progress.revision ?? state.revision;
    state.isStale = progress.stale === true;
    render();
  });
  source.addEventListener("health", (event) => {
    state.health = JSON.parse(event.data);
    render();
  });
  source.addEventListener("observations", (event) => {
    state.observations = JSON.parse(event.data);
    render();
  });
}

/** "42 s", "12 min 3 s", "3 h 4 min", "2 d 5 h". */
function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function servedRate(instance, observation) {
  if (!instance.metricsAddress) return "no /metrics";
  if (observation?.scrapeError) return `unreachable (${observation.scrapeError})`;
  if (typeof observation?.callsPerSecond !== "number") return "measuring…";
  return `${observation.callsPerSecond.toFixed(1)} /s`;
}

function leaseAge(instance, observation, nowMs) {
  const ttl = Number(instance.ttlSeconds ?? 0);
  const ttlText = ttl > 0 ? `TTL ${ttl} s` : "TTL ?";
  if (typeof observation?.leaseRemainingSeconds !== "number") return ttlText;
  const sinceObserved = (nowMs - state.observations.observedAtUnixMs) / 1000;
  const age = observation.leaseGrantedSeconds - observation.leaseRemainingSeconds + sinceObserved;
  return `${formatDuration(age)} ago · ${ttlText}`;
}

function statusOf(instance) {
  return instance.status === "INSTANCE_STATUS_DRAINING" ? "draining" : "serving";
}

function matches(instance) {
  if (state.filter === "") return true;
  const text = [instance.service, instance.instanceId, instance.zone ?? "", instance.address ?? ""];
  return text.some((field) => field.toLowerCase().includes(state.filter));
}

function cell(tag, text, className) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function row(instance, nowMs) {
  const observation = state.observations.instances[keyOf(instance)];
  const tr = document.createElement("tr");
  tr.dataset.instance = keyOf(instance);
  const id = cell("th", instance.instanceId);
  id.scope = "row";
  const status = document.createElement("td");
  status.append(cell("span", statusOf(instance), `status ${statusOf(instance)}`));
  const registeredMs = Date.parse(instance.registeredAt ?? "");
  tr.append(
    id,
    cell("td", instance.address ?? ""),
    status,
    cell("td", String(instance.weight ?? 0), "number"),
    cell("td", instance.zone || "—"),
    cell("td", servedRate(instance, observation), "number"),
    cell("td", leaseAge(instance, observation, nowMs)),
    cell("td", Number.isNaN(registeredMs) ? "—" : `${formatDuration((nowMs - registeredMs) / 1000)} ago`),
  );
  return tr;
}

const HEADINGS = [
  "Instance",
  "Address",
  "Status",
  "Weight",
  "Zone",
  "Served rate",
  "Lease (last keepalive)",
  "Registered",
];

const NUMERIC = new Set(["Weight", "Served rate"]);

/** service → its section, kept across renders so focus inside the page is not lost. */
const sections = new Map();

function sectionOf(service) {
  let section = sections.get(service);
  if (section !== undefined) return section;
  const element = document.createElement("section");
  const headingId = `service-${sections.size}`;
  element.setAttribute("aria-labelledby", headingId);
  const heading = cell("h3", service);
  heading.id = headingId;
  const count = cell("span", "", "count");
  heading.append(count);
  const scroll = document.createElement("div");
  scroll.className = "table-scroll";
  scroll.tabIndex = 0; // a keyboard user can scroll a wide table
  scroll.setAttribute("role", "region");
  scroll.setAttribute("aria-label", `${service} instances`);
  const table = document.createElement("table");
  const caption = cell("caption", `Instances of ${service}`, "visually-hidden");
  const head = document.createElement("thead");
  const headRow = document.createElement("tr");
  for (const text of HEADINGS) {
    const th = cell("th", text, NUMERIC.has(text) ? "number" : undefined);
    th.scope = "col";
    headRow.append(th);
  }
  head.append(headRow);
  const body = document.createElement("tbody");
  table.append(caption, head, body);
  scroll.append(table);
  element.append(heading, scroll);
  section = { element, count, body };
  sections.set(service, section);
  return section;
}

function banner(kind, text) {
  const element = cell("p", text, `banner ${kind}`);
  element.setAttribute("role", "alert");
  return element;
}

function renderBanners() {
  const wanted = [];
  if (!state.isConnected) wanted.push(["down", "Disconnected from the registry: reconnecting…"]);
  if (state.isStale || !state.health.ready) {
    wanted.push([
      "stale",
      `Stale: the registry cannot confirm its etcd watch is current${state.health.ready ? "" : " (etcd does not answer)"}. ` +
        `Membership shown as of revision ${state.revision} may be out of date.`,
    ]);
  }
  for (const panic of state.health.panics) {
    const until = new Date(panic.untilUnixMs).toLocaleTimeString();
    wanted.push([
      "panic",
      `Panic: more than half of the serving instances of ${panic.service} left within 5 s. ` +
        `Callers keep routing over them (panic mode) until about ${until}.`,
    ]);
  }
  for (const [service, callers] of Object.entries(state.health.callersInPanic)) {
    wanted.push([
      "panic",
      `Panic: ${callers} caller${callers === 1 ? "" : "s"} report panic mode for ${service}.`,
    ]);
  }
  const container = $("banners");
  const current = [...container.children].map((element) => element.textContent);
  // Rebuilt only when the text changes, so screen readers announce a banner once.
  if (current.join("\n") !== wanted.map(([, text]) => text).join("\n")) {
    container.replaceChildren(...wanted.map(([kind, text]) => banner(kind, text)));
  }
}

function render() {
  const nowMs = Date.now();
  renderBanners();
  $("connection").textContent = state.isConnected ? "Live" : "Not connected";
  const byService = new Map();
  for (const instance of [...instances.values()].filter(matches)) {
    if (!byService.has(instance.service)) byService.set(instance.service, []);
    byService.get(instance.service).push(instance);
  }
  const services = [...byService.keys()].sort();
  const list = $("service-list");
  for (const [service, section] of sections) {
    if (!byService.has(service)) {
      section.element.remove();
      sections.delete(service);
    }
  }
  for (const service of services) {
    const members = byService.get(service).sort((a, b) => (a.instanceId < b.instanceId ? -1 : 1));
    const section = sectionOf(service);
    const draining = members.filter((instance) => statusOf(instance) === "draining").length;
    section.count.textContent = `${members.length} instance${members.length === 1 ? "" : "s"}${draining > 0 ? `, ${draining} draining` : ""}`;
    section.body.replaceChildren(...members.map((instance) => row(instance, nowMs)));
  }
  // Moved only when out of order: moving a node takes focus away from what is inside it.
  const ordered = services.map((service) => sections.get(service).element);
  if (ordered.some((element, index) => list.children[index] !== element)) list.replaceChildren(...ordered);
  const shown = services.reduce((sum, service) => sum + byService.get(service).length, 0);
  $("summary").textContent =
    `${services.length} service${services.length === 1 ? "" : "s"}, ${shown} instance${shown === 1 ? "" : "s"}` +
    (state.filter === "" ? "" : ` matching “${state.filter}”`);
  $("revision").textContent = `etcd revision ${state.revision}`;
}

$("filter").addEventListener("input", (event) => {
  state.filter = /** @type {HTMLInputElement} */ (event.target).value.trim().toLowerCase();
  render();
});
$("filter-form").addEventListener("submit", (event) => event.preventDefault());
setInterval(render, 1000); // ages tick
connect();
render();
