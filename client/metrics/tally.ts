import type { Counter, Histogram, LabelValues } from "prom-client";

// Hot-path metrics without prom-client on the hot path: prom-client 15 hashes the label set on
// every `inc`/`observe`, and its `labels(...)` children do too (they only bind the labels). A
// series is instead a plain object, resolved once (per method, per instance), whose numbers a call
// bumps; the metric's `collect()` writes them into prom-client when it is scraped.

/** One counter series: `value` is the running total; bump it directly. */
export interface CounterTally<T extends string> {
  readonly labels: LabelValues<T>;
  value: number;
}

/**
 * Replaces `counter`'s series with `tallies` (those above 0: a series appears on its first count,
 * as with `inc`). Call it from the counter's `collect()`; costs one label hash per series per scrape.
 */
export function writeCounter<T extends string>(
  counter: Counter<T>,
  tallies: Iterable<CounterTally<T>>,
): void {
  counter.reset();
  for (const { labels, value } of tallies) if (value > 0) counter.inc(labels, value);
}

/** prom-client's own histogram series (`createBaseValues` in prom-client/lib/histogram.js). */
interface HistogramEntry {
  labels: object;
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

/**
 * One histogram series counted in plain numbers: `observe` is a bucket search over
 * `upperBounds` (the histogram's `buckets`, ascending) and three additions.
 */
export class HistogramTally<T extends string> {
  /** Observations per bucket, not cumulative; the last slot is above every bound (+Inf only). */
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(
    readonly labels: LabelValues<T>,
    readonly upperBounds: readonly number[],
  ) {
    this.#counts = new Array<number>(upperBounds.length + 1).fill(0);
  }

  /** Records one value (seconds, for a duration histogram). */
  observe(value: number): void {
    const bounds = this.upperBounds;
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    this.#counts[i] = (this.#counts[i] as number) + 1;
    this.#sum += value;
    this.#count++;
  }

  /** This series in prom-client's entry shape, or undefined before the first observation. */
  entry(): HistogramEntry | undefined {
    if (this.#count === 0) return undefined;
    const bucketValues: Record<number, number> = {};
    this.upperBounds.forEach((bound, i) => (bucketValues[bound] = this.#counts[i] as number));
    return { labels: this.labels, bucketValues, sum: this.#sum, count: this.#count };
  }
}

/**
 * Replaces `histogram`'s series with `tallies` (those observed at least once). Call it from the
 * histogram's `collect()`. prom-client has no public way to set a histogram's buckets, so this
 * writes its `hashMap` in the shape its `observe` does (prom-client is pinned to 15.1.3 for this; the
 * exposition tests of grpc-server-metrics and client-metrics fail if that shape changes). Keys need
 * only be unique: every series is rewritten at each scrape, and nothing else writes these histograms.
 */
export function writeHistogram<T extends string>(
  histogram: Histogram<T>,
  tallies: Iterable<HistogramTally<T>>,
): void {
  const hashMap: Record<string, HistogramEntry> = {};
  let key = 0;
  for (const tally of tallies) {
    const entry = tally.entry();
    if (entry !== undefined) hashMap[key++] = entry;
  }
  (histogram as unknown as { hashMap: Record<string, HistogramEntry> }).hashMap = hashMap;
}
