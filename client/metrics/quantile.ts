import quickselect from "quickselect";

/** Reused by every {@link quantileOf} call (single-threaded), grown when a larger window comes. */
let scratch = new Float64Array(1024);

/**
 * The `q`-quantile (0..1, nearest rank: the ⌈q·n⌉-th smallest) of `samples[0..count)`, e.g. of a
 * latency ring buffer. Found by Floyd–Rivest selection (the `quickselect` package) over a copy in
 * a reused scratch buffer: O(n) instead of sorting a fresh copy, nothing allocated, `samples`
 * untouched. 0 when `count` is 0.
 */
export function quantileOf(samples: Float64Array, count: number, q: number): number {
  const n = Math.min(count, samples.length);
  if (n <= 0) return 0;
  if (scratch.length < n) scratch = new Float64Array(n);
  scratch.set(n === samples.length ? samples : samples.subarray(0, n));
  const rank = Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1));
  // quickselect's types name arrays; its code indexes any array-like, a Float64Array included.
  quickselect(scratch as unknown as number[], rank, 0, n - 1);
  return scratch[rank] ?? 0;
}
