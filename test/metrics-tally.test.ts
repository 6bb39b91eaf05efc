import test from "ava";
import { Counter, Histogram, Registry } from "prom-client";
import { type CounterTally, HistogramTally, writeCounter, writeHistogram } from "../client/metrics/tally.js";

const BUCKETS = [0.001, 0.01, 0.1, 1];
const VALUES = [0.0005, 0.001, 0.002, 0.05, 0.5, 3, 0.01];

/** The exposition of `registry` without its HELP/TYPE lines' metric name (compared across registries). */
async function text(registry: Registry): Promise<string> {
  return (await registry.metrics()).replaceAll("tallied_", "x_").replaceAll("reference_", "x_");
}

test("a tallied histogram and counter expose exactly what prom-client's observe and inc do", async (t) => {
  const reference = new Registry();
  const histogram = new Histogram({
    name: "reference_seconds",
    help: "h",
    labelNames: ["method"],
    buckets: BUCKETS,
    registers: [reference],
  });
  const counter = new Counter({
    name: "reference_total",
    help: "c",
    labelNames: ["method"],
    registers: [reference],
  });
  for (const value of VALUES) histogram.observe({ method: "A" }, value);
  histogram.observe({ method: "B" }, 0.2);
  counter.inc({ method: "A" });
  counter.inc({ method: "A" });

  const tallied = new Registry();
  const tallies = [
    new HistogramTally({ method: "A" }, BUCKETS),
    new HistogramTally({ method: "B" }, BUCKETS),
  ];
  // C is never observed nor counted: like prom-client, it has no series.
  tallies.push(new HistogramTally({ method: "C" }, BUCKETS));
  const counts: CounterTally<"method">[] = [
    { labels: { method: "A" }, value: 0 },
    { labels: { method: "C" }, value: 0 },
  ];
  new Histogram({
    name: "tallied_seconds",
    help: "h",
    labelNames: ["method"],
    buckets: BUCKETS,
    registers: [tallied],
    collect() {
      writeHistogram(this, tallies);
    },
  });
  new Counter({
    name: "tallied_total",
    help: "c",
    labelNames: ["method"],
    registers: [tallied],
    collect() {
      writeCounter(this, counts);
    },
  });
  for (const value of VALUES) tallies[0]?.observe(value);
  tallies[1]?.observe(0.2);
  (counts[0] as CounterTally<"method">).value += 2;

  t.is(await text(tallied), await text(reference));
  // A second scrape after more counts: totals, not deltas, and still equal.
  histogram.observe({ method: "A" }, 0.003);
  tallies[0]?.observe(0.003);
  counter.inc({ method: "A" });
  (counts[0] as CounterTally<"method">).value++;
  t.is(await text(tallied), await text(reference));
  t.regex(await tallied.metrics(), /# TYPE tallied_total counter/);
});
