import test from "ava";
import { EtcdReadiness, PROBE_FAILURE_THRESHOLD } from "../registry/readiness.js";
import { eventually } from "./helpers/eventually.js";

/** Readiness over a scripted probe (true = etcd answered), probed every 5 ms. */
async function run(answers: boolean[]): Promise<boolean[]> {
  const changes: boolean[] = [];
  let probes = 0;
  const readiness = new EtcdReadiness({
    probe: () => Promise.resolve(answers[Math.min(probes++, answers.length - 1)] ?? false),
    intervalMs: 5,
    changed: (isReady) => changes.push(isReady),
  });
  await readiness.start();
  await eventually(() => probes > answers.length, { what: "every scripted probe" });
  readiness.close();
  return changes;
}

test(`ready on the first answer; not ready only after ${PROBE_FAILURE_THRESHOLD} failed probes in a row; ready again on the next answer`, async (t) => {
  // One missed probe between answers changes nothing; two in a row do; the first probe decides at once.
  t.deepEqual(await run([true, false, true, false, false, true, true]), [true, false, true, false]);
  t.deepEqual(await run([false, true, true]), [false, true, false]);
});
