import test from "ava";
import {
  DEFAULT_STALL_FLOOR_MS,
  InstanceProgress,
  STALL_IDLE_FORGET_MS,
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

test("silence adds up over attempts cancelled before an answer (hedge losers), until an answer or a long idle", (t) => {
  const progress = new InstanceProgress();
  // Three attempts, each cancelled after 20 ms by a hedge that won elsewhere: 60 ms of silence.
  for (const start of [0, 25, 50]) {
    progress.started(0, start, 0);
    t.false(progress.isStalled(1, start + 20, STALL_MIN_ANSWERS, 75), `attempt at ${start}`);
    progress.unanswered(0, start + 20);
  }
  progress.started(0, 75, 0);
  t.false(progress.isStalled(1, 90, STALL_MIN_ANSWERS, 75), "75 ms of silence over four spells");
  t.true(progress.isStalled(1, 91, STALL_MIN_ANSWERS, 75), "76 ms of silence over four spells");
  progress.answered(140, STALL_MIN_ANSWERS);
  progress.started(0, 150, STALL_MIN_ANSWERS);
  t.false(progress.isStalled(1, 200, 2 * STALL_MIN_ANSWERS, 75), "an answer cleared the silence");
  progress.unanswered(0, 200);
  progress.started(0, 200 + STALL_IDLE_FORGET_MS + 1, 2 * STALL_MIN_ANSWERS);
  t.false(
    progress.isStalled(1, 240 + STALL_IDLE_FORGET_MS, 3 * STALL_MIN_ANSWERS, 75),
    "a long idle forgot the earlier 50 ms",
  );
});

test("the threshold is the floor or 3 × p99, whichever is larger", (t) => {
  t.is(stallThresholdMs(DEFAULT_STALL_FLOOR_MS, 2), DEFAULT_STALL_FLOOR_MS);
  t.is(stallThresholdMs(DEFAULT_STALL_FLOOR_MS, 40), 120);
});
