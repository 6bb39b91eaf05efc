/**
 * Runs scenarios one after another, each in its own {@link Scope} (closed even when the scenario
 * throws or overruns its time limit), and collects their rows.
 */
import type { PolicyName } from "../../client/balancing/policies.js";
import { errorRow, type Row, type Scenario } from "./result.js";
import { Scope } from "./scope.js";

export const POLICIES: readonly PolicyName[] = ["round_robin", "weighted_round_robin"];

export interface RunOptions {
  readonly soakMinutes: number;
  readonly policies?: readonly PolicyName[];
  readonly log?: (line: string) => void;
}

const activeScopes = new Set<Scope>();

/** Closes the scopes of scenarios still running (on SIGINT/SIGTERM of the harness): kills their processes. */
export async function closeActiveScopes(): Promise<void> {
  await Promise.all([...activeScopes].map((scope) => scope.close()));
}

export async function runScenario(scenario: Scenario, options: RunOptions): Promise<Row[]> {
  const scope = new Scope();
  activeScopes.add(scope);
  const log = (line: string): void =>
    options.log?.(`[${new Date().toISOString().slice(11, 23)}] ${scenario.name}: ${line}`);
  const context = { scope, policies: options.policies ?? POLICIES, soakMinutes: options.soakMinutes, log };
  const limitMs = scenario.timeoutMs(context);
  let timer: NodeJS.Timeout | undefined;
  let rows: Row[];
  try {
    rows = await Promise.race([
      scenario.run(context),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`scenario overran its ${limitMs} ms limit`)), limitMs);
      }),
    ]);
  } catch (error) {
    rows = [errorRow(scenario.name, error)];
  } finally {
    clearTimeout(timer);
  }
  const cleanupFailures = await scope.close();
  activeScopes.delete(scope);
  if (cleanupFailures.length > 0) {
    rows = rows.map((r) => ({ ...r, note: `${r.note}; cleanup: ${cleanupFailures.join("; ")}` }));
  }
  return rows;
}
