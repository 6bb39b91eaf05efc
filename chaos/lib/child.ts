/**
 * Child processes of a scenario: spawned with their output kept (a bounded tail), signalled by
 * pid only, and SIGKILLed (with their process group when detached) when the scenario's scope closes.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { type Scope, waitFor } from "./scope.js";
import { guard } from "./watchdog.js";

/** The repository root (chaos/lib/ → ../../). */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

const TAIL_CHARS = 64_000;

export class ChildHandle {
  readonly name: string;
  readonly child: ChildProcess;
  readonly startedAtMs = Date.now();
  #stdout = "";
  #stderr = "";
  #exit: { code: number | null; signal: NodeJS.Signals | null; atMs: number } | undefined;
  readonly exited: Promise<void>;
  readonly #isGroup: boolean;

  constructor(name: string, child: ChildProcess, isGroup: boolean) {
    this.name = name;
    this.child = child;
    this.#isGroup = isGroup;
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      this.#stdout = (this.#stdout + chunk).slice(-TAIL_CHARS);
    });
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.#stderr = (this.#stderr + chunk).slice(-TAIL_CHARS);
    });
    guard(child);
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.#exit = { code, signal, atMs: Date.now() };
        resolve();
      });
      child.once("error", (error) => {
        this.#stderr += `\nspawn error: ${error.message}`;
        this.#exit ??= { code: null, signal: null, atMs: Date.now() };
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get stdout(): string {
    return this.#stdout;
  }

  get stderr(): string {
    return this.#stderr;
  }

  get isRunning(): boolean {
    return this.#exit === undefined;
  }

  /** How it ended, or undefined while it runs. */
  get exit(): { code: number | null; signal: NodeJS.Signals | null; atMs: number } | undefined {
    return this.#exit;
  }

  /** Sends `signal` to this process (its group when detached); false when it is gone. */
  signal(signal: NodeJS.Signals): boolean {
    if (!this.isRunning || this.child.pid === undefined) return false;
    try {
      if (this.#isGroup) process.kill(-this.child.pid, signal);
      else this.child.kill(signal);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * SIGKILL it and every descendant, and wait for its exit. Idempotent. Descendants are found in
   * /proc before the kill: `script` starts its command in a session of its own, which no process
   * group signal reaches.
   */
  async kill(): Promise<void> {
    if (!this.isRunning) return;
    const descendants = descendantsOf(this.pid);
    const isSignalled = this.signal("SIGKILL");
    for (const pid of descendants) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    if (isSignalled) await this.exited;
  }

  /** Sends SIGTERM, waits up to `timeoutMs` for the exit, then SIGKILLs. */
  async terminate(timeoutMs = 8000): Promise<void> {
    if (!this.signal("SIGTERM")) return;
    await waitFor(() => !this.isRunning, { timeoutMs });
    await this.kill();
  }

  /** Waits until stdout matches `pattern`; throws with the stderr tail when it does not (or it exits). */
  async waitForOutput(pattern: RegExp, what: string, timeoutMs = 30_000): Promise<RegExpExecArray> {
    const match = await waitFor(
      () => pattern.exec(this.#stdout) ?? (!this.isRunning ? "exited" : undefined),
      {
        timeoutMs,
        intervalMs: 25,
      },
    );
    if (match === undefined || match === "exited") {
      const how =
        match === "exited" ? `it exited (${JSON.stringify(this.#exit)})` : `timed out (${timeoutMs} ms)`;
      throw new Error(`${this.name}: ${what}: ${how}; stderr: ${this.#stderr.slice(-600).trim()}`);
    }
    return match;
  }
}

/** Spawns `node [nodeArgs] --import tsx script args` from the repository root; killed at scope close. */
export function spawnTsx(
  scope: Scope,
  name: string,
  script: string,
  args: readonly string[],
  options: { nodeArgs?: readonly string[]; env?: NodeJS.ProcessEnv } = {},
): ChildHandle {
  return spawnChild(
    scope,
    name,
    process.execPath,
    [...(options.nodeArgs ?? []), "--import", "tsx", script, ...args],
    {
      env: options.env,
    },
  );
}

/** Spawns any command; `detached` makes it a process group, killed as a whole (e.g. `script` + its child). */
export function spawnChild(
  scope: Scope,
  name: string,
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv | undefined; detached?: boolean } = {},
): ChildHandle {
  const child = spawn(command, args, {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...options.env },
    detached: options.detached ?? false,
  });
  const handle = new ChildHandle(name, child, options.detached ?? false);
  scope.defer(`kill ${name}`, () => handle.kill());
  return handle;
}

/** Every descendant pid of `pid` (children first), from /proc; empty where /proc is not there. */
export function descendantsOf(pid: number): number[] {
  const found: number[] = [];
  const visit = (parent: number): void => {
    let children: number[];
    try {
      children = readFileSync(`/proc/${parent}/task/${parent}/children`, "utf8")
        .trim()
        .split(/\s+/)
        .filter((text) => text !== "")
        .map(Number);
    } catch {
      return;
    }
    for (const child of children) {
      if (found.includes(child) || found.length > 1000) continue;
      found.push(child);
      visit(child);
    }
  };
  visit(pid);
  return found;
}

/**
 * For a child process of the harness: exits when its parent is gone (the harness was killed), so a
 * scenario interrupted hard never leaves registries or instances running.
 */
export function exitWithParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(1);
  }, 1000).unref();
}
