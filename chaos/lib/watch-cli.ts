/**
 * `leasehold watch` as a user runs it, from the sources (tsx): `--json` (NDJSON on a pipe), or the
 * live table on a pseudo-terminal (`script`), where the STALE banner is drawn.
 */
import type { ChildHandle } from "./child.js";
import { spawnChild, spawnTsx } from "./child.js";
import type { Scope } from "./scope.js";

const CLI = "cli/main.ts";

export function spawnWatchJson(scope: Scope, name: string, registry: string, service: string): ChildHandle {
  return spawnTsx(scope, name, CLI, ["watch", service, "--registry", registry, "--json"], {
    env: { LEASEHOLD_LOG_LEVEL: "warn" },
  });
}

/** The live table on a pseudo-terminal: `script -qfec CMD /dev/null`, a process group killed as one. */
export function spawnWatchTty(scope: Scope, name: string, registry: string, service: string): ChildHandle {
  const command = [process.execPath, "--import", "tsx", CLI, "watch", service, "--registry", registry]
    .map((part) => `'${part.replaceAll("'", "'\\''")}'`)
    .join(" ");
  // A pty without a terminal behind it is 0×0, and log-update clips its output to the rows: set a size.
  return spawnChild(scope, name, "script", ["-qfec", `stty rows 50 cols 200; exec ${command}`, "/dev/null"], {
    detached: true,
    env: { LEASEHOLD_LOG_LEVEL: "warn", COLUMNS: "160", LINES: "40", TERM: "xterm" },
  });
}

/** One NDJSON event of `leasehold watch --json`. */
interface WatchEvent {
  readonly type: string;
  readonly instance_id: string;
  readonly address: string;
  readonly weight: number;
  readonly status: string;
  readonly revision: number;
}

/**
 * The membership the NDJSON output describes: `snapshot` lines of one revision replace the state
 * (a new revision starts a new snapshot), `added`/`updated` set, `removed` deletes.
 */
export function membershipFromNdjson(
  output: string,
): Map<string, { address: string; weight: number; status: string }> {
  const state = new Map<string, { address: string; weight: number; status: string }>();
  let snapshotRevision: number | undefined;
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue;
    let event: WatchEvent;
    try {
      event = JSON.parse(line) as WatchEvent;
    } catch {
      continue;
    }
    if (event.type === "snapshot") {
      if (snapshotRevision !== event.revision) state.clear();
      snapshotRevision = event.revision;
      state.set(event.instance_id, { address: event.address, weight: event.weight, status: event.status });
      continue;
    }
    snapshotRevision = undefined;
    if (event.type === "removed") state.delete(event.instance_id);
    else if (event.type === "added" || event.type === "updated")
      state.set(event.instance_id, { address: event.address, weight: event.weight, status: event.status });
  }
  return state;
}
