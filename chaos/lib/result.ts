/** What a scenario reports: one row per (scenario, policy), its checks, and the figures behind them. */
import type { PolicyName } from "../../client/balancing/policies.js";
import type { Scope } from "./scope.js";

/** One bound of the issue, checked. `robust` facts (zero failures, no orphans, order) are also asserted in `npm test`. */
export interface Check {
  readonly name: string;
  readonly ok: boolean;
  /** Measured value against the bound, e.g. "1840 ms ≤ 2000 ms". */
  readonly detail: string;
  readonly robust: boolean;
}

export type Verdict = "pass" | "miss" | "error";

export interface Row {
  readonly scenario: string;
  readonly policy: string;
  readonly calls: number;
  readonly failedCalls: number;
  readonly failedAttempts: number;
  /** Differences between the caller's final membership and etcd's (null: not measured). */
  readonly lostEvents: number | null;
  /** The scenario's recovery time in ms (null: not measured or never recovered). */
  readonly recoverMs: number | null;
  readonly verdict: Verdict;
  readonly note: string;
  readonly checks: readonly Check[];
  readonly figures: Readonly<Record<string, unknown>>;
}

export interface ScenarioContext {
  readonly scope: Scope;
  readonly policies: readonly PolicyName[];
  readonly soakMinutes: number;
  readonly log: (line: string) => void;
}

export interface Scenario {
  readonly name: string;
  /** Finishes well under a minute: run by `--quick` and by `npm test`. */
  readonly fast: boolean;
  /** The fault and the bounds, one line. */
  readonly summary: string;
  /** Upper bound of its run time (the runner kills everything after it). */
  readonly timeoutMs: (context: ScenarioContext) => number;
  run(context: ScenarioContext): Promise<Row[]>;
}

export function check(name: string, ok: boolean, detail: string, robust = false): Check {
  return { name, ok, detail, robust };
}

/** Builds a row; the verdict is `miss` when any check failed, and the note names the failed checks. */
export function row(
  fields: Omit<Row, "verdict" | "note" | "checks" | "figures"> & {
    checks: readonly Check[];
    figures?: Record<string, unknown>;
    note?: string;
  },
): Row {
  const misses = fields.checks.filter((c) => !c.ok);
  const note =
    misses.length > 0
      ? misses.map((c) => `${c.name}: ${c.detail}`).join("; ") +
        (fields.note === undefined ? "" : `; ${fields.note}`)
      : [...fields.checks.map((c) => c.detail), ...(fields.note === undefined ? [] : [fields.note])].join(
          "; ",
        );
  return {
    ...fields,
    verdict: misses.length > 0 ? "miss" : "pass",
    note,
    checks: fields.checks,
    figures: fields.figures ?? {},
  };
}

export function errorRow(scenario: string, error: unknown): Row {
  const message = error instanceof Error ? error.message : String(error);
  return {
    scenario,
    policy: "-",
    calls: 0,
    failedCalls: 0,
    failedAttempts: 0,
    lostEvents: null,
    recoverMs: null,
    verdict: "error",
    note: message,
    checks: [check("scenario ran", false, message, true)],
    figures: {},
  };
}

/** The one table: fixed-width columns, the note last (wrapped by the terminal, never cut). */
export function formatTable(rows: readonly Row[]): string {
  const head = [
    "scenario",
    "policy",
    "calls",
    "failed calls",
    "failed attempts",
    "lost events",
    "recover ms",
    "verdict",
    "note",
  ];
  const oneLine = (text: string): string => {
    const flat = text.replace(/\s+/g, " ").trim();
    return flat.length > 400 ? `${flat.slice(0, 399)}…` : flat;
  };
  const cells = rows.map((r) => [
    r.scenario,
    r.policy,
    String(r.calls),
    String(r.failedCalls),
    String(r.failedAttempts),
    r.lostEvents === null ? "-" : String(r.lostEvents),
    r.recoverMs === null ? "-" : String(Math.round(r.recoverMs)),
    r.verdict.toUpperCase(),
    oneLine(r.note),
  ]);
  const widths = head.map((h, i) =>
    i === head.length - 1 ? 0 : Math.max(h.length, ...cells.map((c) => (c[i] ?? "").length)),
  );
  const line = (c: readonly string[]): string =>
    c.map((cell, i) => (i === c.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  ");
  return [
    line(head),
    line(widths.map((w, i) => (i === head.length - 1 ? "----" : "-".repeat(w)))),
    ...cells.map(line),
  ].join("\n");
}
