import test from "ava";
import {
  BREAKER_STATE_VALUE,
  DEFAULT_BREAKER_OPTIONS,
  InstanceBreaker,
  isEndpointFault,
  resolveBreakerOptions,
  type BreakerState,
} from "../client/breaker/instance-breaker.js";
import { LeaseholdError, type LeaseholdErrorCode } from "../client/errors.js";

const fail = (code: LeaseholdErrorCode) => () => Promise.reject(new LeaseholdError(code, `test ${code}`));
const ok = () => Promise.resolve("ok");

function breakerWithLog(options = {}) {
  const transitions: string[] = [];
  const changed: ((state: BreakerState) => void)[] = [];
  const breaker = new InstanceBreaker(
    "i-1",
    resolveBreakerOptions({ volumeThreshold: 5, resetTimeoutMs: 30, ...options }),
    (state, previous) => {
      transitions.push(`${previous}->${state}`);
      for (const waiter of changed.splice(0)) waiter(state);
    },
  );
  /**
   * Resolves at the next transition. opossum's reset timer is unref'd, so a ref'd guard timer
   * keeps the process alive meanwhile (ava ends a test whose process has nothing left to do).
   */
  const nextTransition = () =>
    new Promise<BreakerState>((resolve) => {
      const guard = setTimeout(() => undefined, 10_000);
      changed.push((state) => {
        clearTimeout(guard);
        resolve(state);
      });
    });
  return { breaker, transitions, nextTransition };
}

async function fireAll(
  breaker: InstanceBreaker,
  n: number,
  attempt: () => Promise<unknown>,
): Promise<LeaseholdError[]> {
  const errors: LeaseholdError[] = [];
  for (let i = 0; i < n; i++) {
    try {
      await breaker.fire(attempt);
    } catch (error) {
      errors.push(LeaseholdError.from(error));
    }
  }
  return errors;
}

test("only endpoint faults count: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN", (t) => {
  for (const code of [
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
  ] as const)
    t.true(isEndpointFault(code), code);
  for (const code of [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "CANCELLED",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "UNIMPLEMENTED",
  ] as const) {
    t.false(isEndpointFault(code), code);
  }
});

test("caller faults (INVALID_ARGUMENT) never trip the breaker and reach the caller unchanged", async (t) => {
  const { breaker, transitions } = breakerWithLog();
  t.teardown(() => breaker.shutdown());
  const errors = await fireAll(breaker, 20, fail("INVALID_ARGUMENT"));
  t.is(errors.length, 20);
  t.true(errors.every((e) => e.code === "INVALID_ARGUMENT"));
  t.is(breaker.state, "closed");
  t.deepEqual(transitions, []);
});

test("fewer calls than volumeThreshold never open the breaker", async (t) => {
  const { breaker } = breakerWithLog();
  t.teardown(() => breaker.shutdown());
  await fireAll(breaker, 4, fail("UNAVAILABLE"));
  t.is(breaker.state, "closed");
  t.true(breaker.isAdmitting);
});

test("endpoint faults open the breaker; an open breaker rejects as UNAVAILABLE without calling", async (t) => {
  const { breaker, transitions } = breakerWithLog({ resetTimeoutMs: 60_000 });
  t.teardown(() => breaker.shutdown());
  await fireAll(breaker, 5, fail("UNAVAILABLE"));
  t.is(breaker.state, "open");
  t.false(breaker.isAdmitting);
  t.false(breaker.isCallPermitted);
  t.deepEqual(transitions, ["closed->open"]);
  let called = false;
  const [rejection] = await fireAll(breaker, 1, () => {
    called = true;
    return ok();
  });
  t.false(called);
  t.is(rejection?.code, "UNAVAILABLE");
  t.true(rejection?.retryable);
  t.regex(rejection?.message ?? "", /breaker is open/);
});

test("half-open lets exactly one trial through; its success closes the breaker", async (t) => {
  const { breaker, transitions, nextTransition } = breakerWithLog();
  t.teardown(() => breaker.shutdown());
  const halfOpen = nextTransition().then(() => nextTransition());
  await fireAll(breaker, 5, fail("DEADLINE_EXCEEDED"));
  t.is(await halfOpen, "half-open");
  t.true(breaker.isAdmitting);
  t.true(breaker.isCallPermitted);
  let finishTrial: (value: string) => void = () => undefined;
  const trial = breaker.fire(() => new Promise<string>((resolve) => (finishTrial = resolve)));
  t.false(breaker.isCallPermitted, "the trial is in flight");
  const [second] = await fireAll(breaker, 1, ok);
  t.is(second?.code, "UNAVAILABLE");
  finishTrial("ok");
  t.is(await trial, "ok");
  t.is(breaker.state, "closed");
  t.deepEqual(transitions, ["closed->open", "open->half-open", "half-open->closed"]);
});

test("a failed half-open trial opens the breaker again", async (t) => {
  const { breaker, transitions, nextTransition } = breakerWithLog();
  t.teardown(() => breaker.shutdown());
  const halfOpen = nextTransition().then(() => nextTransition());
  await fireAll(breaker, 5, fail("INTERNAL"));
  await halfOpen;
  await fireAll(breaker, 1, fail("UNAVAILABLE"));
  t.is(breaker.state, "open");
  t.deepEqual(transitions, ["closed->open", "open->half-open", "half-open->open"]);
});

test("shutdown is idempotent and later fires reject as UNAVAILABLE", async (t) => {
  const { breaker } = breakerWithLog();
  breaker.shutdown();
  breaker.shutdown();
  t.true(breaker.isShutdown);
  t.false(breaker.isCallPermitted);
  const [error] = await fireAll(breaker, 1, ok);
  t.is(error?.code, "UNAVAILABLE");
});

test("defaults are documented numbers; options are validated and frozen", (t) => {
  t.deepEqual(resolveBreakerOptions(), DEFAULT_BREAKER_OPTIONS);
  t.deepEqual(DEFAULT_BREAKER_OPTIONS, {
    volumeThreshold: 5,
    errorThresholdPercentage: 50,
    resetTimeoutMs: 5000,
    maxResetTimeoutMs: 60_000,
    consecutiveFailures: 5,
    rollingCountTimeoutMs: 10_000,
    rollingCountBuckets: 10,
  });
  t.is(resolveBreakerOptions({ resetTimeoutMs: 90_000 }).maxResetTimeoutMs, 90_000);
  t.true(Object.isFrozen(resolveBreakerOptions({ resetTimeoutMs: 10 })));
  t.is(resolveBreakerOptions({ resetTimeoutMs: 10 }).volumeThreshold, 5);
  t.throws(() => resolveBreakerOptions({ resetTimeoutMs: 0 }), {
    instanceOf: LeaseholdError,
    message: /resetTimeoutMs/,
  });
  t.throws(() => resolveBreakerOptions({ errorThresholdPercentage: 120 }), { instanceOf: LeaseholdError });
  t.deepEqual(BREAKER_STATE_VALUE, { closed: 0, "half-open": 1, open: 2 });
});

test("consecutive endpoint faults open the breaker even when the window is mostly successes", async (t) => {
  const { breaker, transitions } = breakerWithLog({ consecutiveFailures: 3, volumeThreshold: 1000 });
  await fireAll(breaker, 50, ok);
  for (const code of ["UNAVAILABLE", "INTERNAL"] as const) {
    await fireAll(breaker, 1, fail(code));
    breaker.noteOutcome(code);
  }
  breaker.noteOutcome("OK"); // a success in between restarts the count
  t.is(breaker.state, "closed");
  for (let i = 0; i < 2; i++) breaker.noteOutcome("UNAVAILABLE");
  breaker.noteOutcome("INVALID_ARGUMENT"); // a caller fault is not the endpoint's: restarts too
  for (let i = 0; i < 3; i++) breaker.noteOutcome("DEADLINE_EXCEEDED");
  t.is(breaker.state, "open");
  t.deepEqual(transitions, ["closed->open"]);
  breaker.shutdown();
});

test("each failed half-open trial doubles the reopen delay up to the cap; closing resets it", async (t) => {
  const { breaker, nextTransition } = breakerWithLog({
    consecutiveFailures: 1,
    resetTimeoutMs: 20,
    maxResetTimeoutMs: 50,
  });
  const delays: number[] = [breaker.resetTimeoutMs];
  breaker.noteOutcome("UNAVAILABLE");
  for (let trial = 0; trial < 3; trial++) {
    t.is(await nextTransition(), "half-open");
    delays.push(breaker.resetTimeoutMs); // the delay if this trial fails
    const reopened = nextTransition();
    await fireAll(breaker, 1, fail("UNAVAILABLE"));
    t.is(await reopened, "open");
  }
  t.deepEqual(delays, [20, 40, 50, 50]);
  t.is(await nextTransition(), "half-open");
  const closed = nextTransition();
  await fireAll(breaker, 1, ok);
  t.is(await closed, "closed");
  t.is(breaker.resetTimeoutMs, 20);
  breaker.shutdown();
});

test("failureRatio counts endpoint faults among the calls of the window; caller faults count as successes", async (t) => {
  const { breaker } = breakerWithLog({ volumeThreshold: 100, consecutiveFailures: 0 });
  t.is(breaker.failureRatio, 0, "no calls yet");
  for (const attempt of [ok, ok, fail("UNAVAILABLE"), fail("INVALID_ARGUMENT")])
    await breaker.fire(attempt).catch(() => undefined);
  t.is(breaker.failureRatio, 0.25);
  breaker.shutdown();
});
