import test from "ava";
import { RetryBudget } from "../client/balancing/retry-budget.js";

test("retries are capped at 20 % of requests plus 10 per second over the window", (t) => {
  let now = 1_000_000;
  const budget = new RetryBudget({ now: () => now });
  for (let i = 0; i < 1000; i++) budget.deposit();
  let granted = 0;
  while (budget.tryWithdraw()) granted++;
  t.is(granted, 200 + 10 * 10, "ratio × requests + minPerSecond × window seconds");
  now += 1000;
  t.false(budget.tryWithdraw(), "spent within the window");
  now += 10_000;
  t.true(budget.tryWithdraw(), "the window moved on");
});

test("a quiet client can still retry minPerSecond times per second", (t) => {
  let now = 0;
  const budget = new RetryBudget({ now: () => now, windowMs: 1000 });
  let granted = 0;
  for (let i = 0; i < 50; i++) if (budget.tryWithdraw()) granted++;
  t.is(granted, 10);
  now += 1000;
  t.true(budget.tryWithdraw());
});

test("bad options are refused", (t) => {
  t.throws(() => new RetryBudget({ ratio: 2 }), { instanceOf: RangeError });
  t.throws(() => new RetryBudget({ minPerSecond: -1 }), { instanceOf: RangeError });
});
