import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import type { ExecutionContext } from "ava";
import { eventually } from "./eventually.js";

const BIN = fileURLToPath(new URL("../../leasehold.mjs", import.meta.url));

/** A `leasehold` child process whose stdout lines are collected. */
export interface CliProcess {
  readonly child: ChildProcess;
  readonly stdout: string[];
  stderr: string;
  /** Resolves with the first stdout line matching `pattern` (already seen or later). */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves with the exit code (or signal) once the process ended and its output is all read. */
  readonly exited: Promise<number | string>;
}

/** Spawns `node leasehold.mjs ...args` in its own process group; the group is SIGKILLed at teardown if it still runs. */
export function spawnCli(
  t: ExecutionContext,
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): CliProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ["pipe", "pipe", "pipe"],
    // Its own process group, so teardown also kills what it spawned (the demo's instances).
    detached: true,
    env: { ...process.env, LEASEHOLD_LOG_LEVEL: "warn", ...env },
  });
  const result: CliProcess = {
    child,
    stdout: [],
    stderr: "",
    waitForLine: async (pattern, timeoutMs = 20_000) =>
      await eventually(() => result.stdout.find((line) => pattern.test(line)), {
        timeoutMs,
        what: `a line matching ${pattern} from leasehold ${args.join(" ")} (stderr: ${result.stderr.slice(-500)})`,
      }),
    // "close", not "exit": "exit" can come before the last stdout/stderr chunks are read (seen in
    // CI: a one-line error missing from stderr at exit).
    exited: once(child, "close").then(([code, signal]) => (code as number | null) ?? (signal as string)),
  };
  let partial = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    result.stdout.push(...lines);
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (result.stderr += chunk));
  child.stdin.on("error", () => undefined);
  // SIGKILL of the whole group, then wait for "exit", not "close": a demo SIGKILLed alone left its
  // instances running with its stdout open, so "close" never came and a CI run hung after its
  // last test (a loaded run, where hostile-input's demo outlived the test).
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, "exit");
      try {
        if (child.pid === undefined) throw new Error("not spawned"); // never kill(0): our own group
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      await exited;
    }
  });
  return result;
}
