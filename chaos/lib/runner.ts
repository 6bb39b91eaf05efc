/**
 * Runs scenarios one after another, each in its own {@link Scope} (closed even when the scenario
 * throws or overruns its time limit), and collects their rows.
 */
import type { PolicyName } from "../../client/balancing/policies.js";
import { stockCallersOf } from "./caller.js";
import { check, errorRow, row, type Row, type Scenario } from "./result.js";
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
  for (const stock of stockCallersOf(scope)) {
    await stock.stop();
    rows.push(
      row({
        scenario: scenario.name,
        policy: stock.policy,
        calls: stock.calls,
        failedCalls: stock.failed,
        failedAttempts: stock.failedAttempts(),
        lostEvents: null,
        recoverMs: null,
        checks: [
          check(
            "0 failed calls",
            stock.failed === 0,
            `${stock.failed} failed calls${stock.failed > 0 ? ` (${stock.failureSummary()})` : ""}` +
              `; ${stock.committed} committed by their headers, then dropped (not retryable, gRFC A6)`,
            true,
          ),
        ],
        figures: { failures: stock.failures.slice(0, 20) },
      }),
    );
  }
  const cleanupFailures = await scope.close();
  activeScopes.delete(scope);
  if (cleanupFailures.length > 0) {
    rows = rows.map((r) => ({ ...r, note: `${r.note}; cleanup: ${cleanupFailures.join("; ")}` }));
  }
  return rows;
}
