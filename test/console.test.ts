import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import test, { type ExecutionContext } from "ava";
import { chromium, type Page } from "playwright-core";
import { counterRate, readScrapedCounters } from "../registry/console/instance-scrape.js";
import { spawnCli, type CliProcess } from "./helpers/cli.js";
import { registration, rpc, startFixtureFor } from "./helpers/registry-fixture.js";

/** Debian's `chromium` package (scripts/setup.mjs --for=test installs it); override with LEASEHOLD_CHROMIUM. */
const CHROMIUM = process.env.LEASEHOLD_CHROMIUM ?? "/usr/bin/chromium";
/** Screenshots land here (gitignored). */
const ARTIFACTS = fileURLToPath(new URL("../test-artifacts/", import.meta.url));
const TTL_SECONDS = 2;
/** Generous waits: two cores shared with other test files. Timing is measured and logged, not asserted. */
const LOADED_MACHINE_MS = 60_000;

/**
 * Flags for a root user on a machine with a closed network: no sandbox (root), and no background
 * networking, component updates or sync, whose refused connections otherwise pile up at start.
 */
const CHROMIUM_ARGS = [
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

test("served calls are the sum of grpc_server_handled_total; callers' panic services are read from leasehold_client_panic_mode", (t) => {
  const text = [
    "# HELP grpc_server_handled_total Total number of RPCs completed on the server.",
    "# TYPE grpc_server_handled_total counter",
    'grpc_server_handled_total{grpc_type="unary",grpc_service="e.Echo",grpc_method="Echo",grpc_code="OK"} 40',
    'grpc_server_handled_total{grpc_type="unary",grpc_service="e.Echo",grpc_method="Echo",grpc_code="Unavailable"} 2',
    "grpc_server_handled_totally_different 1000",
    'leasehold_client_panic_mode{service="echo"} 1',
    'leasehold_client_panic_mode{service="calc"} 0',
    'leasehold_client_panic_mode{other="x",service="a \\"quoted\\" one"} 1',
  ].join("\n");
  t.deepEqual(readScrapedCounters(text), { handledTotal: 42, panicServices: ["echo", 'a \\"quoted\\" one'] });
  t.deepEqual(readScrapedCounters("process_cpu_seconds_total 3\n"), {
    handledTotal: undefined,
    panicServices: [],
  });
});

test("a served rate needs two scrapes and restarts after a counter reset", (t) => {
  t.is(counterRate(undefined, 100, 1000), undefined);
  t.is(counterRate({ total: 100, atMs: 1000 }, 150, 3000), 25);
  t.is(counterRate({ total: 150, atMs: 3000 }, 10, 5000), undefined, "the instance restarted");
  t.is(counterRate({ total: 150, atMs: 3000 }, 150, 3000), undefined, "no time passed");
});

test.serial(
  "the console lists live instances with served rate and lease age, and an instance SIGKILLed leaves the page once its lease expires",
  async (t) => {
    t.timeout(4 * LOADED_MACHINE_MS);
    if (!existsSync(CHROMIUM)) t.fail(`no Chromium at ${CHROMIUM}: run node scripts/setup.mjs --for=test`);
    const { registry } = await startFixtureFor(t, { adminListen: "127.0.0.1:0" });
    const registryFlag = `--registry=${registry.address}`;
    const serve = (id: string, weight: number): CliProcess =>
      spawnCli(t, [
        "serve",
        "echo",
        registryFlag,
        `--id=${id}`,
        `--weight=${weight}`,
        "--zone=zone-a",
        "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        `--ttl=${TTL_SECONDS}`,
      ]);
    const [survivor, victim] = [serve("echo-1", 1), serve("echo-2", 3)];
    for (const instance of [survivor, victim]) await instance.waitForLine(/serving/, LOADED_MACHINE_MS);
    spawnCli(t, [
      "call",
      "echo",
      "Echo",
      '{"message":"hi"}',
      registryFlag,
      "--duration=600",
      "--concurrency=2",
    ]);

    const page = await openConsole(t, registry.adminAddress);
    const row = (id: string) => page.locator(`tr[data-instance="echo/${id}"]`);
    await row("echo-1").waitFor({ timeout: LOADED_MACHINE_MS });
    await row("echo-2").waitFor({ timeout: LOADED_MACHINE_MS });
    const [id, address, status, weight, zone] = await cells(page, "echo-2", [1, 2, 3, 4, 5]);
    t.deepEqual([id, status, weight, zone], ["echo-2", "serving", "3", "zone-a"]);
    t.regex(address ?? "", /^127\.0\.0\.1:\d+$/);

    // Served rate (scraped from each instance's /metrics) and lease age (from etcd) fill in.
    for (const key of ["echo/echo-1", "echo/echo-2"]) {
      await page.waitForFunction(
        `/^(?!0\\.0 )\\d+\\.\\d \\/s$/.test(cellText(${JSON.stringify(key)}, 6))`,
        undefined,
        {
          timeout: LOADED_MACHINE_MS,
        },
      );
    }
    t.regex((await cells(page, "echo-2", [7]))[0] ?? "", new RegExp(`^\\d+ s ago · TTL ${TTL_SECONDS} s$`));
    t.regex((await cells(page, "echo-2", [8]))[0] ?? "", /^\d+ s ago$/);

    await mkdir(ARTIFACTS, { recursive: true });
    const screenshot = join(ARTIFACTS, "console.png");
    await page.screenshot({ path: screenshot, fullPage: true });
    t.log(`screenshot: ${screenshot}`);

    victim.child.kill("SIGKILL");
    const killedAtMs = Date.now();
    t.is(await victim.exited, "SIGKILL");
    await row("echo-2").waitFor({ state: "detached", timeout: LOADED_MACHINE_MS });
    const goneAfterMs = Date.now() - killedAtMs;
    t.log(`echo-2 left the page ${goneAfterMs} ms after SIGKILL (TTL ${TTL_SECONDS} s)`);
    t.true(await row("echo-1").isVisible(), "the survivor stays");
    t.is(survivor.child.exitCode, null);
    await page.screenshot({ path: join(ARTIFACTS, "console-after-kill.png"), fullPage: true });
  },
);

test.serial(
  "the console passes axe-core's WCAG 2.1 AA rules and is keyboard reachable in order",
  async (t) => {
    t.timeout(2 * LOADED_MACHINE_MS);
    if (!existsSync(CHROMIUM)) t.fail(`no Chromium at ${CHROMIUM}: run node scripts/setup.mjs --for=test`);
    const page = await consoleWithOneInstance(t);

    await page.addScriptTag({ path: createRequire(import.meta.url).resolve("axe-core/axe.min.js") });
    const violations = await page.evaluate<string[]>(
      `axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } })
        .then((results) => results.violations.map((v) => v.id + ": " + v.nodes.map((n) => n.target).join(" ")))`,
    );
    t.deepEqual(violations, []);

    const focused: string[] = [];
    for (let i = 0; i < 3; i++) {
      await page.keyboard.press("Tab");
      focused.push(await page.evaluate<string>("describeFocus()"));
    }
    t.deepEqual(focused, ["a: Skip to services", "input: filter", "div: calculator instances"]);
    await page.keyboard.press("Shift+Tab");
    await page.keyboard.type("no-such-instance");
    await page.locator('tr[data-instance^="calculator/"]').waitFor({ state: "detached" });
    t.regex(await page.locator("#summary").innerText(), /^0 services, 0 instances matching/);
  },
);

test.serial(
  "the console shows a stale banner while etcd is frozen and a panic banner when most instances of a service leave at once",
  async (t) => {
    t.timeout(3 * LOADED_MACHINE_MS);
    if (!existsSync(CHROMIUM)) t.fail(`no Chromium at ${CHROMIUM}: run node scripts/setup.mjs --for=test`);
    const fixture = await startFixtureFor(t, { adminListen: "127.0.0.1:0" });
    const registryApi = rpc(fixture.client);
    const leases = new Map<string, { leaseId: string; registrationToken: string }>();
    for (const instanceId of ["a-1", "a-2", "a-3"]) {
      const registered = await registryApi.register(
        registration({ service: "alpha", instanceId, ttlSeconds: "30" }),
      );
      leases.set(instanceId, registered);
    }
    const page = await openConsole(t, fixture.registry.adminAddress);
    await page.locator('tr[data-instance="alpha/a-3"]').waitFor({ timeout: LOADED_MACHINE_MS });
    t.is(await page.locator(".banner").count(), 0, "no banner while all is well");

    // Two of three serving instances leave within the 5 s window: callers would enter panic mode.
    for (const instanceId of ["a-1", "a-2"]) {
      const { leaseId, registrationToken } = leases.get(instanceId) ?? { leaseId: "", registrationToken: "" };
      await registryApi.deregister({ service: "alpha", instanceId, leaseId, registrationToken });
    }
    const panic = page.locator(".banner.panic");
    await panic.waitFor({ timeout: LOADED_MACHINE_MS });
    t.regex(
      await panic.innerText(),
      /^Panic: more than half of the serving instances of alpha left within 5 s/,
    );
    t.is(await panic.getAttribute("role"), "alert");
    await page.screenshot({ path: join(ARTIFACTS, "console-panic.png"), fullPage: true });
    // It ends with the callers' default grace (2 × the 30 s TTL): not waited for here.

    const etcdProcess = fixture.etcd.process;
    etcdProcess.kill("SIGSTOP");
    t.teardown(() => void etcdProcess.kill("SIGCONT"));
    const stale = page.locator(".banner.stale");
    await stale.waitFor({ timeout: LOADED_MACHINE_MS });
    t.regex(await stale.innerText(), /^Stale: the registry cannot confirm its etcd watch is current/);
    await page.screenshot({ path: join(ARTIFACTS, "console-stale.png"), fullPage: true });
    etcdProcess.kill("SIGCONT");
    await stale.waitFor({ state: "detached", timeout: LOADED_MACHINE_MS });
    t.true(
      await page.locator('tr[data-instance="alpha/a-3"]').isVisible(),
      "the membership stayed on the page",
    );
  },
);

/** A registry (in process) with one calculator instance (a child process) and the console open on it. */
async function consoleWithOneInstance(t: ExecutionContext): Promise<Page> {
  const { registry } = await startFixtureFor(t, { adminListen: "127.0.0.1:0" });
  const instance = spawnCli(t, [
    "serve",
    "calculator",
    `--registry=${registry.address}`,
    "--id=calc-1",
    "--listen=127.0.0.1:0",
    "--metrics-listen=127.0.0.1:0",
  ]);
  await instance.waitForLine(/serving/, LOADED_MACHINE_MS);
  const page = await openConsole(t, registry.adminAddress);
  await page.locator('tr[data-instance="calculator/calc-1"]').waitFor({ timeout: LOADED_MACHINE_MS });
  return page;
}

/**
 * Headless Chromium on `http://ADMIN/ui`, with two page helpers (strings: the tests' types have no
 * DOM): `describeFocus()` and `cellText(key, column)`.
 */
async function openConsole(t: ExecutionContext, adminAddress: string | undefined): Promise<Page> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  t.teardown(() => browser.close());
  // bypassCSP: the page's Content-Security-Policy (default-src 'self') refuses the test's own
  // injected scripts (axe-core, string predicates); the page's own scripts are files, so it holds.
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 }, bypassCSP: true });
  await page.addInitScript({
    content: `
      window.describeFocus = () => {
        const element = document.activeElement;
        const name = element.tagName === "A" ? element.textContent : element.getAttribute("aria-label") ?? element.id;
        return element.tagName.toLowerCase() + ": " + name;
      };
      window.cellText = (key, column) =>
        document.querySelector('tr[data-instance="' + key + '"] > :nth-child(' + column + ")")?.textContent ?? "";
    `,
  });
  await page.goto(`http://${adminAddress}/ui`);
  return page;
}

/** Texts of 1-based `columns` of an echo instance's row. */
async function cells(page: Page, id: string, columns: readonly number[]): Promise<string[]> {
  const row = page.locator(`tr[data-instance="echo/${id}"]`);
  return await Promise.all(
    columns.map(async (column) => await row.locator(`> :nth-child(${column})`).innerText()),
  );
}
