import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import test from "ava";
import { Backoff } from "../client/backoff.js";

const execFileAsync = promisify(execFile);

test("backoff grows by the multiplier up to the cap, with full jitter, and reset starts over", (t) => {
  const top = new Backoff({ initialDelayMs: 100, multiplier: 2, maxDelayMs: 500, random: () => 0.999999 });
  const delays = Array.from({ length: 5 }, () => Math.round(top.next()));
  t.deepEqual(delays, [100, 200, 400, 500, 500]);
  top.reset();
  t.is(Math.round(top.next()), 100);
  const bottom = new Backoff({ random: () => 0 });
  t.is(bottom.next(), 0);
});

test("backoff refuses options that cannot make progress", (t) => {
  t.throws(() => new Backoff({ initialDelayMs: 0 }), { instanceOf: RangeError });
  t.throws(() => new Backoff({ initialDelayMs: 10, maxDelayMs: 5 }), { instanceOf: RangeError });
});

/** Runs `code` (ESM, with `sleep` imported) in a fresh Node process; resolves with its stdout. */
async function runWithSleep(code: string): Promise<string> {
  const { stdout } = await execFileAsync(
    process.execPath,
    ["--import=tsx", "--input-type=module", "-e", `import { sleep } from "./client/backoff.ts";\n${code}`],
    { cwd: fileURLToPath(new URL("..", import.meta.url)), timeout: 30_000 },
  );
  return stdout;
}

test("a backoff sleep keeps a process alive while it waits, when nothing else does", async (t) => {
  // An unref'd sleep let `leasehold watch` exit while it waited to reconnect.
  t.is(await runWithSleep(`await sleep(200); console.log("woke");`), "woke\n");
});

test("an aborted sleep resolves at once and lets the process exit", async (t) => {
  const code = `const stopping = new AbortController();
setTimeout(() => stopping.abort(), 50);
await sleep(600_000, stopping.signal);
console.log("aborted");
await sleep(600_000, stopping.signal);
console.log("already aborted");`;
  t.is(await runWithSleep(code), "aborted\nalready aborted\n");
});
