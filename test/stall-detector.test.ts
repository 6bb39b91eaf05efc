import test from "ava";
import {
  DEFAULT_STALL_FLOOR_MS,
  InstanceProgress,
  STALL_MIN_ANSWERS,
  stallThresholdMs,
} from "../client/balancing/stall-detector.js";

test("an instance in flight is stalled only once past its threshold AND after others answered enough", (t) => {
  const progress = new InstanceProgress();
  progress.started(0, 1000, 50); // busy from t=1000 with the balancer at 50 answers
  t.false(progress.isStalled(1, 1070, 50 + STALL_MIN_ANSWERS, 75), "within the threshold");
  t.false(
    progress.isStalled(1, 5000, 50 + STALL_MIN_ANSWERS - 1, 75),
    "others barely answered: a pause of the caller",
  );
  t.true(progress.isStalled(1, 1076, 50 + STALL_MIN_ANSWERS, 75));
  t.false(progress.isStalled(0, 5000, 1000, 75), "nothing in flight is never stalled");
});

test("an answer resets the clock; a second attempt on a busy instance does not", (t) => {
  const progress = new InstanceProgress();
  progress.started(0, 0, 0);
  progress.started(1, 500, 40); // already busy: the silence is counted from t=0
  t.true(progress.isStalled(2, 600, 40, 75));
  progress.answered(600, 41);
  t.false(progress.isStalled(1, 650, 41 + STALL_MIN_ANSWERS, 75));
  t.true(progress.isStalled(1, 700, 41 + STALL_MIN_ANSWERS, 75));
});

test("the threshold is the floor or 3 × p99, whichever is larger", (t) => {
  t.is(stallThresholdMs(DEFAULT_STALL_FLOOR_MS, 2), DEFAULT_STALL_FLOOR_MS);
  t.is(stallThresholdMs(DEFAULT_STALL_FLOOR_MS, 40), 120);
});
