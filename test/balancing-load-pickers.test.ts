/**
 * The load-aware pickers, pure: `least_loaded`, `peak_ewma` and `weighted_round_robin` with `orca`
 * (gRFC A58), over fake instances with a seeded PRNG and an injected clock.
 */
import test from "ava";
import {
  InstanceLoadState,
  OrcaLoadReport,
  PeakEwma,
  REPORT_PARSE_INTERVAL_MS,
} from "../client/balancing/load-report.js";
import { createPicker, type Pickable, type PolicyName } from "../client/balancing/policies.js";
import { resolvePolicyConfig, type PolicyConfig } from "../client/balancing/policy-config.js";
import { fakePickable } from "./helpers/fake-pickable.js";
import { seeded } from "./helpers/seeded-random.js";

interface FakeInstance extends Pickable {
  outstanding: number;
  readonly load: InstanceLoadState;
  readonly rtt: PeakEwma;
}

const instance = (instanceId: string, weight = 1): FakeInstance =>
  fakePickable(instanceId, weight, { load: new InstanceLoadState(), rtt: new PeakEwma() });

function report(fields: Partial<OrcaLoadReport>): OrcaLoadReport {
  return OrcaLoadReport.fromPartial(fields);
}

function shares(
  policy: PolicyName,
  instances: readonly FakeInstance[],
  n: number,
  { config = {}, nowMs = 0, seed = 1 }: { config?: PolicyConfig; nowMs?: number; seed?: number } = {},
): Record<string, number> {
  const picker = createPicker(policy, instances, {
    random: seeded(seed),
    now: () => nowMs,
    config: resolvePolicyConfig(policy, config),
  });
  const result: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const id = picker.pick()?.instanceId ?? "none";
    result[id] = (result[id] ?? 0) + 1;
  }
  for (const id of Object.keys(result)) result[id] = (result[id] as number) / n;
  return result;
}

const near = (actual: number | undefined, expected: number, tolerance = 0.02): boolean =>
  Math.abs((actual ?? 0) - expected) <= tolerance;

test("least_loaded: idle instances reporting CPU 20 %, 50 %, 90 % share calls in inverse proportion (5 : 2 : 1.11)", (t) => {
  const instances = ["a", "b", "c"].map((id) => instance(id));
  [0.2, 0.5, 0.9].forEach((cpu, i) => instances[i]?.load.record(report({ cpuUtilization: cpu }), 1_000));
  const got = shares("least_loaded", instances, 20_000, { nowMs: 2_000 });
  const inverse = [1 / 0.2, 1 / 0.5, 1 / 0.9];
  const sum = inverse.reduce((a, b) => a + b, 0);
  t.log(got);
  ["a", "b", "c"].forEach((id, i) => t.true(near(got[id], (inverse[i] as number) / sum), `${id} ${got[id]}`));
});

test("least_loaded: application_utilization wins over cpu_utilization when set", (t) => {
  const [a, b] = ["a", "b"].map((id) => instance(id)) as [FakeInstance, FakeInstance];
  a.load.record(report({ cpuUtilization: 0.9, applicationUtilization: 0.25 }), 0);
  b.load.record(report({ cpuUtilization: 0.25, applicationUtilization: 0.75 }), 0);
  const got = shares("least_loaded", [a, b], 20_000);
  t.true(near(got.a, 0.75), `a ${got.a}`);
});

test("least_loaded: a report older than maxReportAgeMs is unknown and counts as the mean of the fresh ones", (t) => {
  const [a, b, c] = ["a", "b", "c"].map((id) => instance(id)) as [FakeInstance, FakeInstance, FakeInstance];
  a.load.record(report({ cpuUtilization: 0.2 }), 10_000);
  b.load.record(report({ cpuUtilization: 0.6 }), 10_000);
  c.load.record(report({ cpuUtilization: 0.05 }), 0); // 11 s old at 11_000: stale at the default 10 s
  const got = shares("least_loaded", [a, b, c], 30_000, { nowMs: 11_000 });
  // Capacities 1/0.2, 1/0.6 and 1/0.4 (the mean): 5, 1.667, 2.5.
  t.true(near(got.c, 2.5 / 9.167), `c ${got.c}`);
  const fresh = shares("least_loaded", [a, b, c], 30_000, {
    nowMs: 11_000,
    config: { leastLoaded: { maxReportAgeMs: 20_000 } },
  });
  t.true((fresh.c ?? 0) > 0.7, `c with a longer age limit ${fresh.c}`);
});

test("least_loaded: with no report at all it is least_request by registered weight", (t) => {
  const got = shares("least_loaded", [instance("a", 1), instance("b", 3)], 20_000);
  t.true(near(got.b, 0.75), `b ${got.b}`);
});

test("least_loaded: the first drawn keeps the call unless the second, given it too, carries fewer outstanding calls per capacity", (t) => {
  const [a, b] = ["a", "b"].map((id) => instance(id)) as [FakeInstance, FakeInstance];
  a.load.record(report({ cpuUtilization: 0.2 }), 0);
  b.load.record(report({ cpuUtilization: 0.8 }), 0);
  a.outstanding = 10; // 10 / 5 = 2 per unit of capacity, against b's 1 / 1.25 = 0.8
  b.outstanding = 1;
  t.deepEqual(shares("least_loaded", [a, b], 1_000), { b: 1 });
  a.outstanding = 2; // 0.4 per unit; b would carry (0 + 1) / 1.25 = 0.8 with the call: no switch
  b.outstanding = 0;
  const got = shares("least_loaded", [a, b], 20_000);
  t.true(near(got.a, 0.8), `a ${got.a}`);
});

test("PeakEwma: a slower answer replaces the estimate at once; faster ones pull it down by 1 - e^(-Δt/τ); idle, it decays", (t) => {
  const ewma = new PeakEwma();
  const config = { decayMs: 10_000, defaultRttMs: 30 };
  t.is(ewma.estimateMs(0, config), 30);
  ewma.observe(10, 0, config.decayMs);
  t.is(ewma.estimateMs(0, config), 10);
  ewma.observe(50, 100, config.decayMs);
  t.is(ewma.estimateMs(100, config), 50);
  ewma.observe(10, 10_100, config.decayMs);
  const expected = 50 * Math.exp(-1) + 10 * (1 - Math.exp(-1));
  t.true(Math.abs(ewma.estimateMs(10_100, config) - expected) < 1e-9);
  t.true(Math.abs(ewma.estimateMs(20_100, config) - expected * Math.exp(-1)) < 1e-9);
});

test("peak_ewma: an instance 50 ms slower than three fast ones gets < 5 % of calls, and is tried again once its estimate decays", (t) => {
  const instances = ["a", "b", "c", "slow"].map((id) => instance(id));
  let nowMs = 0;
  for (const inst of instances) inst.rtt.observe(inst.instanceId === "slow" ? 51 : 1, nowMs, 10_000);
  const picker = createPicker("peak_ewma", instances, { random: seeded(3), now: () => nowMs });
  const count = (n: number): Record<string, number> => {
    const result: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const picked = picker.pick() as FakeInstance;
      result[picked.instanceId] = (result[picked.instanceId] ?? 0) + 1;
      nowMs += 1; // one call per ms, each answered in its instance's time
      picked.rtt.observe(picked.instanceId === "slow" ? 51 : 1, nowMs, 10_000);
    }
    return result;
  };
  const first = count(10_000);
  t.log(first);
  t.true((first.slow ?? 0) < 500, `slow ${first.slow}`);
  // Without answers for 60 s its estimate decays (51 ms × e^-6 ≈ 0.13 ms) below the fast ones' 1 ms.
  const slow = instances[3] as FakeInstance;
  nowMs += 60_000;
  for (const inst of instances) if (inst !== slow) inst.rtt.observe(1, nowMs, 10_000);
  t.true(slow.rtt.estimateMs(nowMs, { decayMs: 10_000, defaultRttMs: 30 }) < 1);
  t.true((count(100).slow ?? 0) > 0, "tried again");
});

test("peak_ewma: cost grows with outstanding calls, so a fast instance that queues up loses to a slower idle one", (t) => {
  const [fast, slower] = ["fast", "slower"].map((id) => instance(id)) as [FakeInstance, FakeInstance];
  fast.rtt.observe(2, 0, 10_000);
  slower.rtt.observe(5, 0, 10_000);
  fast.outstanding = 4; // 2 × 5 = 10 > 5 × 1
  t.deepEqual(shares("peak_ewma", [fast, slower], 1_000), { slower: 1 });
  fast.outstanding = 1; // 2 × 2 = 4 < 5
  t.deepEqual(shares("peak_ewma", [fast, slower], 1_000), { fast: 1 });
});

test("A58 weight: qps / (utilization + eps/qps × penalty), 0 during the blackout and after expiry", (t) => {
  const config = {
    blackoutPeriodMs: 10_000,
    weightExpirationPeriodMs: 180_000,
    errorUtilizationPenalty: 1,
    weightUpdatePeriodMs: 1_000,
  };
  const load = new InstanceLoadState();
  load.record(report({ rpsFractional: 100, eps: 10, cpuUtilization: 0.4 }), 0);
  t.is(load.orcaWeight(9_999, config), 0, "blackout");
  t.is(load.orcaWeight(10_000, config), 100 / (0.4 + 0.1));
  t.is(load.orcaWeight(10_000, { ...config, errorUtilizationPenalty: 0 }), 100 / 0.4);
  t.is(load.orcaWeight(180_000, config), 0, "expired");
  load.record(report({ rpsFractional: 100, cpuUtilization: 0.5 }), 180_001);
  t.is(load.orcaWeight(185_000, config), 0, "a new blackout after expiry");
  t.is(load.orcaWeight(190_001, config), 200);
  load.record(report({ rpsFractional: 0, cpuUtilization: 0.5 }), 190_002);
  t.is(load.orcaWeight(190_003, config), 200, "a report without qps keeps the last weight");
});

test("weighted_round_robin with orca: shares follow A58 weights; instances without one get the mean; equal before any report", (t) => {
  const instances = ["a", "b", "c"].map((id) => instance(id, 1));
  const orca = { blackoutPeriodMs: 0 };
  t.deepEqual(
    Object.values(shares("weighted_round_robin", instances, 3_000, { config: { orca } })).map((s) =>
      Math.round(s * 3),
    ),
    [1, 1, 1],
  );
  [0.2, 0.5, 0.9].forEach((cpu, i) =>
    instances[i]?.load.record(report({ rpsFractional: 100, cpuUtilization: cpu }), 0),
  );
  const got = shares("weighted_round_robin", instances, 8_100, { config: { orca }, nowMs: 1 });
  const w = [500, 200, 111.11];
  t.log(got);
  ["a", "b", "c"].forEach((id, i) =>
    t.true(near(got[id], (w[i] as number) / 811.11, 0.001), `${id} ${got[id]}`),
  );
  t.true((got.c ?? 1) < (got.b ?? 0) && (got.b ?? 1) < (got.a ?? 0), "90 % gets the smallest share");
  const fresh = instance("d", 1); // no report: the mean of 500, 200, 111.1
  const withNew = shares("weighted_round_robin", [...instances, fresh], 12_160, {
    config: { orca },
    nowMs: 1,
  });
  t.true(near(withNew.d, 270.37 / 1081.48, 0.001), `d ${withNew.d}`);
});

test("policy settings: orca, leastLoaded and peakEwma belong to their policies and are range-checked", (t) => {
  const bad = (policy: string, json: unknown): string =>
    t.throws(() => resolvePolicyConfig(policy, json))?.message ?? "";
  t.regex(bad("round_robin", { orca: {} }), /orca is for the weighted_round_robin policy/);
  t.regex(
    bad("weighted_round_robin", { orca: { errorUtilizationPenalty: -1 } }),
    /errorUtilizationPenalty out of range/,
  );
  t.regex(
    bad("weighted_round_robin", { orca: {}, slowStart: { windowMs: 1 } }),
    /slowStart does not combine with orca/,
  );
  t.regex(bad("least_loaded", { leastLoaded: { maxReportAgeMs: 0 } }), /maxReportAgeMs out of range/);
  t.regex(bad("least_request", { peakEwma: {} }), /peakEwma is for the peak_ewma policy/);
  t.deepEqual(resolvePolicyConfig("weighted_round_robin", { orca: {} }).orca, {
    blackoutPeriodMs: 10_000,
    weightExpirationPeriodMs: 180_000,
    errorUtilizationPenalty: 1,
    weightUpdatePeriodMs: 1_000,
  });
});

test("least_loaded with zone-aware routing: each zone's side weighs by load, and the picker reports every instance's capacity", (t) => {
  const local = { ...instance("a1"), zone: "a" };
  const remote = { ...instance("b1"), zone: "b" };
  local.load.record(report({ cpuUtilization: 0.5 }), 0);
  remote.load.record(report({ cpuUtilization: 0.25 }), 0);
  const picker = createPicker("least_loaded", [local, remote], {
    random: seeded(1),
    now: () => 0,
    config: resolvePolicyConfig("least_loaded", { zone: "a" }),
  });
  t.deepEqual(
    picker.effectiveWeights,
    new Map([
      ["a1", 2],
      ["b1", 4],
    ]),
  );
  // Zone capacity is by registered weight (1 : 1): zone a holds its callers' half, so calls stay there.
  t.is(picker.pick()?.instanceId, "a1");
});

test("least_loaded: a report stating utilization 0 (neither field set) is unknown, not an idle instance that takes everything", (t) => {
  const [a, b] = ["a", "b"].map((id) => instance(id)) as [FakeInstance, FakeInstance];
  a.load.record(report({ rpsFractional: 10 }), 0);
  b.load.record(report({ cpuUtilization: 0.5 }), 0);
  const got = shares("least_loaded", [a, b], 20_000);
  t.true(near(got.a, 0.5), `a ${got.a}`);
});

test("reports arriving every 10 ms are parsed every REPORT_PARSE_INTERVAL_MS, so a changed load is seen (not only the first report)", (t) => {
  const state = new InstanceLoadState();
  const encoded = (cpu: number): Uint8Array =>
    OrcaLoadReport.encode(report({ cpuUtilization: cpu, rpsFractional: 10 })).finish();
  let changesSeen = 0;
  let last: number | undefined;
  for (let nowMs = 0; nowMs <= 1000; nowMs += 10) {
    state.receive(encoded(nowMs < 500 ? 0.2 : 0.8), nowMs);
    const seen = state.freshUtilization(nowMs, 10_000);
    if (seen !== last) changesSeen++;
    last = seen;
    t.is(state.receivedAtMs, nowMs, "every report confirms freshness");
  }
  t.is(state.freshUtilization(1000, 10_000), 0.8, "the load after the change was parsed");
  t.is(state.parsedAtMs, 1000 - (1000 % REPORT_PARSE_INTERVAL_MS), "parsed once per interval");
  t.is(state.weightUpdatedAtMs, state.parsedAtMs, "A58 weights are refreshed by each parse");
  t.is(changesSeen, 2, "unknown → 0.2, then 0.2 → 0.8");
});
