// Client overhead per unary call at concurrency 64 (and 1): the balanced client (round_robin, with
// and without metrics; every other policy but ring_hash at c=64 in full runs) against a stock
// grpc-js client with built-in round_robin over a static ipv4: target, to the same 3 echo servers. The caller runs alone in a child process
// (bench/children/caller.mjs) and reports its own process.cpuUsage(); the servers run in another.
// DESIGN §8: ≤ 3 µs of client CPU per call above grpc-js, throughput ≥ 95 % of it.
import { startChild } from "./cluster.mjs";
import { interleave, ratioRow, summarizeVariants } from "./harness.mjs";

export const description =
  "client CPU µs per call and throughput: balanced client vs grpc-js round_robin (static ipv4: target)";
export const defaultRounds = 5;

const BASELINE = "grpc-js";
const CANDIDATES = ["leasehold", "leasehold+metrics"];
// The other policies, at c=64 only (bench/children/caller.mjs builds one client per policy).
const POLICIES = [
  "random",
  "weighted_random",
  "weighted_round_robin",
  "least_request",
  "least_loaded",
  "peak_ewma",
];

/** @param {{ rounds: number, warmupRounds: number, quick: boolean }} options */
export async function run({ rounds, warmupRounds, quick }) {
  const calls = quick ? 2_000 : 20_000;
  const concurrencies = quick ? [64] : [1, 64];
  const servers = await startChild("echo-servers.mjs", { count: 3 });
  let caller;
  try {
    caller = await startChild("caller.mjs", servers.ready);
    const failures = new Set();
    const sample = async (variant, concurrency) => {
      const count = concurrency === 1 ? calls / 8 : calls;
      const result = await caller.ask(`run ${variant} ${count} ${concurrency}`, "result", 300_000);
      if (result.firstError !== undefined) failures.add(`${variant}: ${result.firstError}`);
      return {
        cpuUsPerCall: result.cpuUs / count,
        callsPerSecond: (count * 1000) / result.wallMs,
        p50Ms: result.p50Ms,
        p99Ms: result.p99Ms,
        errors: result.errors,
      };
    };
    // JIT and connections warm before any round is recorded, even in --quick.
    for (const variant of [BASELINE, ...CANDIDATES])
      await caller.ask(`run ${variant} ${calls / 4} 64`, "result", 300_000);
    const name = (variant, concurrency) => `${variant} c=${concurrency}`;
    const policyVariants = quick ? [] : POLICIES.map((policy) => `leasehold:${policy}`);
    for (const variant of policyVariants)
      await caller.ask(`run ${variant} ${calls / 4} 64`, "result", 300_000);
    const variants = concurrencies.flatMap((concurrency) =>
      [BASELINE, ...CANDIDATES, ...(concurrency === 64 ? policyVariants : [])].map((variant) => ({
        name: name(variant, concurrency),
        run: () => sample(variant, concurrency),
      })),
    );
    const samples = await interleave(variants, { rounds, warmupRounds });
    const ratios = concurrencies.flatMap((concurrency) =>
      CANDIDATES.flatMap((variant) => {
        const pair = { numerator: name(variant, concurrency), denominator: name(BASELINE, concurrency) };
        return [
          ratioRow(samples, {
            ...pair,
            metric: "cpuUsPerCall",
            of: "CPU/call",
            difference: true,
            unit: "µs",
            target: 3,
          }),
          ratioRow(samples, { ...pair, metric: "cpuUsPerCall", of: "CPU/call" }),
          ratioRow(samples, { ...pair, metric: "callsPerSecond", of: "calls/s", target: 0.95, goal: "≥" }),
        ];
      }),
    );
    ratios.push(
      ...policyVariants.map((variant) =>
        ratioRow(samples, {
          numerator: name(variant, 64),
          denominator: name(BASELINE, 64),
          metric: "cpuUsPerCall",
          of: "CPU/call",
          difference: true,
          unit: "µs",
          target: 3,
        }),
      ),
    );
    return {
      columns: [
        { key: "cpuUsPerCall", label: "CPU/call", unit: "µs" },
        { key: "callsPerSecond", label: "throughput", unit: "calls/s", digits: 0 },
        { key: "p50Ms", label: "p50", unit: "ms", digits: 2 },
        { key: "p99Ms", label: "p99", unit: "ms", digits: 2 },
        { key: "errors", label: "failed", unit: "calls", digits: 0 },
      ],
      variants: summarizeVariants(samples, ["cpuUsPerCall", "callsPerSecond", "p50Ms", "p99Ms", "errors"]),
      ratios,
      notes: [
        `${calls} calls per sample at c=64 (${calls / 8} at c=1), 3 echo servers in another process`,
        ...[...failures].map((failure) => `failed calls, first error: ${failure}`),
      ],
    };
  } finally {
    await caller?.kill();
    await servers.kill();
  }
}
