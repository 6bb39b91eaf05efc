/**
 * Guards the harness's child processes against the harness dying hard (SIGKILL, an ava timeout):
 * one detached watchdog process per harness holds the PIDs alive now and kills them when its
 * stdin (a pipe from the harness) closes. A PID is dropped from it as soon as its process exits,
 * so a reused PID is never killed.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

const WATCHDOG = fileURLToPath(new URL("../children/watchdog.mjs", import.meta.url));
let watchdog: ChildProcess | undefined;

function write(line: string): void {
  if (watchdog === undefined) {
    watchdog = spawn(process.execPath, [WATCHDOG], { stdio: ["pipe", "ignore", "ignore"], detached: true });
    watchdog.unref();
    watchdog.on("error", () => undefined);
    watchdog.stdin?.on("error", () => undefined);
    (watchdog.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  watchdog.stdin?.write(`${line}\n`);
}

/** Kills `child` (and its descendants) if the harness dies before it exits. */
export function guard(child: ChildProcess): void {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  write(`+${pid}`);
  child.once("exit", () => write(`-${pid}`));
}

/** Removes `dir` if the harness dies before {@link unguardDir}. */
export function guardDir(dir: string): void {
  write(`+dir ${dir}`);
}

export function unguardDir(dir: string): void {
  write(`-dir ${dir}`);
}
