import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import test, { type ExecutionContext } from "ava";
import { chromium, type Page } from "playwright-core";
import { startLocalEtcd } from "../cli/local-etcd.js";
import { startRegistry } from "../registry/index.js";
import { spawnCli, type CliProcess } from "./helpers/cli.js";

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

test.serial(
  "the console lists live instances with served rate and lease age, and an instance SIGKILLed leaves the page once its lease expires",
  async (t) => {
    t.timeout(4 * LOADED_MACHINE_MS);
    if (!existsSync(CHROMIUM)) t.fail(`no Chromium at ${CHROMIUM}: run node scripts/setup.mjs --for=test`);
    const etcd = await startLocalEtcd();
    t.teardown(() => etcd.stop());
    const registry = await startRegistry({
      listen: "127.0.0.1:0",
      adminListen: "127.0.0.1:0",
      etcdEndpoints: [etcd.endpoint],
      progressIntervalMs: 500,
    });
    t.teardown(() => registry.close());
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

/** A registry with one calculator instance (in process) and the console open on it. */
async function consoleWithOneInstance(t: ExecutionContext): Promise<Page> {
  const etcd = await startLocalEtcd();
  t.teardown(() => etcd.stop());
  const registry = await startRegistry({
    listen: "127.0.0.1:0",
    adminListen: "127.0.0.1:0",
    etcdEndpoints: [etcd.endpoint],
  });
  t.teardown(() => registry.close());
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
