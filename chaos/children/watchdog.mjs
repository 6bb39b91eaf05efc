// The harness's watchdog: reads `+PID` / `-PID` and `+dir PATH` / `-dir PATH` lines on stdin; when
// stdin closes (the harness exited or was killed, even by SIGKILL), it SIGKILLs every PID still
// listed and their descendants, then removes the directories still listed, so an interrupted run
// never leaves etcd, registries, instances, watchers or etcd data dirs behind.
import { readFileSync, rmSync } from "node:fs";
import { createInterface } from "node:readline";

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => undefined);
const pids = new Set();
const dirs = new Set();
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.startsWith("+dir ")) return void dirs.add(line.slice(5));
  if (line.startsWith("-dir ")) return void dirs.delete(line.slice(5));
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
  for (const dir of dirs) {
    if (dir.startsWith("/tmp/") || dir.includes("leasehold-etcd-"))
      rmSync(dir, { recursive: true, force: true });
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
