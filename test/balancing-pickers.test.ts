import test from "ava";
import {
  createPicker,
  isPolicyName,
  POLICY_NAMES,
  type Pickable,
  type PolicyName,
} from "../client/balancing/policies.js";
import { WeightedRoundRobinPicker } from "../client/balancing/weighted-round-robin-picker.js";
import { fakePickable } from "./helpers/fake-pickable.js";
import { seeded } from "./helpers/seeded-random.js";

interface FakeInstance extends Pickable {
  outstanding: number;
}

const instance = (instanceId: string, weight = 1, overrides: Partial<FakeInstance> = {}): FakeInstance =>
  fakePickable(instanceId, weight, overrides);

function counts(picks: readonly (Pickable | undefined)[]): Record<string, number> {
  const result: Record<string, number> = {};
  for (const pick of picks) {
    const id = pick?.instanceId ?? "none";
    result[id] = (result[id] ?? 0) + 1;
  }
  return result;
}

function pickMany(
  policy: PolicyName,
  instances: readonly FakeInstance[],
  n: number,
  random = seeded(42),
): Record<string, number> {
  const picker = createPicker(policy, instances, { random });
  return counts(Array.from({ length: n }, () => picker.pick()));
}

const abc123 = (): FakeInstance[] => [instance("a", 1), instance("b", 2), instance("c", 3)];

test("weighted_round_robin with weights 1:2:3 gives exactly 1:2:3 over every cycle of 6", (t) => {
  const picker = createPicker("weighted_round_robin", abc123(), { random: seeded(1) });
  for (let cycle = 0; cycle < 100; cycle++) {
    t.deepEqual(
      counts(Array.from({ length: 6 }, () => picker.pick())),
      { a: 1, b: 2, c: 3 },
      `cycle ${cycle}`,
    );
  }
});

test("weighted_round_robin interleaves smoothly, as nginx does (c b a c b c, not c c c b b a)", (t) => {
  const picker = createPicker("weighted_round_robin", abc123(), { random: seeded(1) });
  const sequence = Array.from({ length: 12 }, () => picker.pick()?.instanceId).join("");
  t.is(sequence, "cbacbccbacbc");
});

test("weighted_round_robin is deterministic: random is never consulted", (t) => {
  const picker = createPicker("weighted_round_robin", abc123(), {
    random: () => {
      throw new Error("random used");
    },
  });
  t.is(picker.pick()?.instanceId, "c");
});

test("weighted_round_robin keeps its cycle across a rebuild with the same instances", (t) => {
  const instances = abc123();
  let picker = createPicker("weighted_round_robin", instances, { random: Math.random });
  const sequence: string[] = [];
  for (let i = 0; i < 12; i++) {
    sequence.push(picker.pick()?.instanceId ?? "none");
    picker = createPicker("weighted_round_robin", instances, { random: Math.random, previous: picker });
  }
  t.is(sequence.join(""), "cbacbccbacbc");
  t.true(picker instanceof WeightedRoundRobinPicker);
});

test("weighted_round_robin: a new instance starts at 0 and the ratio holds over whole cycles", (t) => {
  let picker = createPicker("weighted_round_robin", [instance("a", 1), instance("b", 1)], {
    random: Math.random,
  });
  picker.pick();
  picker = createPicker("weighted_round_robin", [instance("a", 1), instance("b", 1), instance("c", 2)], {
    random: Math.random,
    previous: picker,
  });
  const tally = counts(Array.from({ length: 400 }, () => picker.pick()));
  t.true(
    Math.abs((tally.a ?? 0) - 100) <= 1 &&
      Math.abs((tally.b ?? 0) - 100) <= 1 &&
      Math.abs((tally.c ?? 0) - 200) <= 1,
    JSON.stringify(tally),
  );
});

test("round_robin picks each instance once per cycle, starting at a random index", (t) => {
  const instances = [instance("a"), instance("b"), instance("c")];
  const picker = createPicker("round_robin", instances, { random: () => 0.5 });
  t.deepEqual(
    Array.from({ length: 7 }, () => picker.pick()?.instanceId),
    ["b", "c", "a", "b", "c", "a", "b"],
  );
  const other = createPicker("round_robin", instances, { random: () => 0.99 });
  t.is(other.pick()?.instanceId, "c");
});

test("round_robin ignores weights", (t) => {
  t.deepEqual(pickMany("round_robin", abc123(), 300), { a: 100, b: 100, c: 100 });
});

test("random is uniform within 3 % and ignores weights (seeded PRNG)", (t) => {
  const tally = pickMany("random", abc123(), 30_000);
  for (const id of ["a", "b", "c"])
    t.true(Math.abs((tally[id] ?? 0) / 30_000 - 1 / 3) < 0.03, JSON.stringify(tally));
});

test("weighted_random follows weights 1:2:3 within 2 % (seeded PRNG)", (t) => {
  const n = 60_000;
  const tally = pickMany("weighted_random", abc123(), n);
  t.true(Math.abs((tally.a ?? 0) / n - 1 / 6) < 0.02, JSON.stringify(tally));
  t.true(Math.abs((tally.b ?? 0) / n - 2 / 6) < 0.02, JSON.stringify(tally));
  t.true(Math.abs((tally.c ?? 0) / n - 3 / 6) < 0.02, JSON.stringify(tally));
});

test("weighted_random maps the ends of [0, 1) to the first and last instance", (t) => {
  t.is(createPicker("weighted_random", abc123(), { random: () => 0 }).pick()?.instanceId, "a");
  t.is(createPicker("weighted_random", abc123(), { random: () => 0.999999 }).pick()?.instanceId, "c");
  t.is(createPicker("weighted_random", abc123(), { random: () => 0.2 }).pick()?.instanceId, "b");
});

test("least_request never picks the busiest of three (power of two choices)", (t) => {
  const instances = [instance("a", 1, { outstanding: 10 }), instance("b"), instance("c")];
  const tally = pickMany("least_request", instances, 3000);
  t.is(tally.a, undefined);
  t.true((tally.b ?? 0) > 1000 && (tally.c ?? 0) > 1000, JSON.stringify(tally));
});

test("least_request prefers fewer outstanding calls, live, without a rebuild", (t) => {
  const a = instance("a");
  const b = instance("b");
  const picker = createPicker("least_request", [a, b], { random: seeded(7) });
  a.outstanding = 3;
  t.deepEqual(counts(Array.from({ length: 50 }, () => picker.pick())), { b: 50 });
  a.outstanding = 0;
  b.outstanding = 1;
  t.deepEqual(counts(Array.from({ length: 50 }, () => picker.pick())), { a: 50 });
});

test("least_request weighs outstanding calls by weight: outstanding / weight", (t) => {
  // a: 1 / 1 = 1; b: 3 / 4 = 0.75 → b, although it has more calls in flight.
  const picker = createPicker(
    "least_request",
    [instance("a", 1, { outstanding: 1 }), instance("b", 4, { outstanding: 3 })],
    {
      random: seeded(3),
    },
  );
  t.deepEqual(counts(Array.from({ length: 50 }, () => picker.pick())), { b: 50 });
});

test("least_request shares idle instances by weight (1:2:3 within 2 %, seeded PRNG)", (t) => {
  const n = 60_000;
  const tally = pickMany("least_request", abc123(), n);
  t.true(Math.abs((tally.a ?? 0) / n - 1 / 6) < 0.02, JSON.stringify(tally));
  t.true(Math.abs((tally.b ?? 0) / n - 2 / 6) < 0.02, JSON.stringify(tally));
  t.true(Math.abs((tally.c ?? 0) / n - 3 / 6) < 0.02, JSON.stringify(tally));
});

for (const policy of POLICY_NAMES) {
  test(`${policy}: weight 0, DRAINING, open-breaker and not-READY instances are never picked`, (t) => {
    const instances = [
      instance("a", 0),
      instance("b", 5, { isServing: false }),
      instance("c", 5, { isBreakerAdmitting: false }),
      instance("f", 5, { isReady: false }),
      instance("d", 1),
      instance("e", 2),
    ];
    const picker = createPicker(policy, instances, { random: seeded(11) });
    t.deepEqual(
      picker.instances.map((i) => i.instanceId),
      ["d", "e"],
    );
    const tally = pickMany(policy, instances, 600, seeded(11));
    t.deepEqual(Object.keys(tally).sort(), ["d", "e"]);
  });

  test(`${policy}: exclude skips tried instances; all excluded gives undefined`, (t) => {
    const picker = createPicker(policy, abc123(), { random: seeded(5) });
    const exclude = new Set(["a", "c"]);
    for (let i = 0; i < 50; i++) t.is(picker.pick(exclude)?.instanceId, "b");
    t.is(picker.pick(new Set(["a", "b", "c"])), undefined);
    const some = counts(Array.from({ length: 300 }, () => picker.pick(new Set(["b"]))));
    t.deepEqual(Object.keys(some).sort(), ["a", "c"]);
  });

  test(`${policy}: an empty or all-ineligible set picks undefined`, (t) => {
    t.is(createPicker(policy, [], { random: seeded(1) }).pick(), undefined);
    t.is(
      createPicker(policy, [instance("a", 0), instance("b", 1, { isServing: false })], {
        random: seeded(1),
      }).pick(),
      undefined,
    );
  });

  test(`${policy}: a single instance is always picked`, (t) => {
    const picker = createPicker(policy, [instance("only", 7)], { random: seeded(9) });
    for (let i = 0; i < 10; i++) t.is(picker.pick()?.instanceId, "only");
    t.is(picker.policy, policy);
  });
}

test("isPolicyName knows exactly the standard names", (t) => {
  t.deepEqual(
    [...POLICY_NAMES],
    [
      "random",
      "round_robin",
      "weighted_random",
      "weighted_round_robin",
      "least_request",
      "ring_hash",
      "least_loaded",
      "peak_ewma",
    ],
  );
  t.true(isPolicyName("least_request"));
  t.false(isPolicyName("pick_first"));
});
