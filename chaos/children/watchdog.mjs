// The harness's watchdog: reads `+PID` / `-PID` lines on stdin; when stdin closes (the harness
// exited or was killed, even by SIGKILL), it SIGKILLs every PID still listed and their
// descendants, so an interrupted run never leaves etcd, registries, instances or watchers behind.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => undefined);
const pids = new Set();
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const pid = Number(line.slice(1));
  if (!Number.isInteger(pid) || pid <= 1) return;
  if (line.startsWith("+")) pids.add(pid);
  else pids.delete(pid);
});
lines.on("close", () => {
  for (const pid of pids) {
    for (const victim of [pid, ...descendantsOf(pid)]) {
      try {
        process.kill(victim, "SIGKILL");
      } catch {
        // gone already
      }
    }
  }
  process.exit(0);
});

function descendantsOf(pid, found = []) {
  let children = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return found;
  }
  for (const child of children) {
    if (found.includes(child) || found.length > 1000) continue;
    found.push(child);
    descendantsOf(child, found);
  }
  return found;
}
