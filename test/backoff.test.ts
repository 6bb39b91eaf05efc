import test from "ava";
import { Backoff } from "../client/backoff.js";

test("backoff grows by the multiplier up to the cap, with full jitter, and reset starts over", (t) => {
  const top = new Backoff({ initialDelayMs: 100, multiplier: 2, maxDelayMs: 500, random: () => 0.999999 });
  const delays = Array.from({ length: 5 }, () => Math.round(top.next()));
  t.deepEqual(delays, [100, 200, 400, 500, 500]);
  top.reset();
  t.is(Math.round(top.next()), 100);
  const bottom = new Backoff({ random: () => 0 });
  t.is(bottom.next(), 0);
});

test("backoff refuses options that cannot make progress", (t) => {
  t.throws(() => new Backoff({ initialDelayMs: 0 }), { instanceOf: RangeError });
  t.throws(() => new Backoff({ initialDelayMs: 10, maxDelayMs: 5 }), { instanceOf: RangeError });
});
