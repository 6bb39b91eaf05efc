import test from "ava";
import { MassRemovalDetector } from "../client/balancing/mass-removal-detector.js";

test("more than half of the serving instances leaving within the window is a mass removal", (t) => {
  let now = 0;
  const detector = new MassRemovalDetector({ now: () => now });
  t.false(detector.record(1, 3), "1 of 4");
  now += 1000;
  t.true(detector.record(2, 1), "then 2 more of the 3 left: 3 of 4 within 5 s");
});

test("departures outside the window do not add up; exactly the threshold is not above it", (t) => {
  let now = 0;
  const detector = new MassRemovalDetector({ now: () => now, windowMs: 5000 });
  t.false(detector.record(1, 3));
  now += 6000;
  t.false(detector.record(1, 2), "1 of 3 within the window");
  t.false(new MassRemovalDetector().record(1, 1), "1 of 2 is 50 %, not above it");
  t.true(new MassRemovalDetector().record(1, 0), "the only instance");
  t.false(new MassRemovalDetector().record(0, 4), "nothing left");
  t.true(new MassRemovalDetector({ thresholdPercent: 20 }).record(1, 3), "a lower threshold");
});
