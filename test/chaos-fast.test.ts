/**
 * The fast chaos scenarios (issue 6; `npm run chaos -- --quick`) inside `npm test`: real etcd,
 * registry and instance processes, faults injected by signal. Only the facts that hold on a loaded
 * 2-core box are asserted here (0 failed calls, no orphan or ghost keys, leases kept, streams kept);
 * timed bounds are measured and reported by `npm run chaos`, and logged here.
 */
import test from "ava";
import { runScenario } from "../chaos/lib/runner.js";
import { SCENARIOS } from "../chaos/scenarios/index.js";

for (const scenario of SCENARIOS.filter((s) => s.fast)) {
  test.serial(`chaos ${scenario.name}: ${scenario.summary}`, async (t) => {
    t.timeout(
      scenario.timeoutMs({ soakMinutes: 1, policies: [], scope: undefined as never, log: () => undefined }) +
        30_000,
    );
    const rows = await runScenario(scenario, { soakMinutes: 1, log: (line) => t.log(line) });
    for (const row of rows) {
      t.log(
        `${row.verdict.toUpperCase()} ${row.policy}: calls ${row.calls}, failed ${row.failedCalls}, failed attempts ${row.failedAttempts}; ${row.note}`,
      );
      t.not(row.verdict, "error", `${row.scenario}: ${row.note}`);
      for (const fact of row.checks.filter((c) => c.robust)) {
        t.true(fact.ok, `${row.scenario} ${row.policy}: ${fact.name}: ${fact.detail}`);
      }
    }
  });
}
