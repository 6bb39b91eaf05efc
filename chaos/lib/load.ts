/** What every caller under load records. */

/** Throughput is sampled in buckets of this many ms. */
export const BUCKET_MS = 250;

/** A call that failed after retries. */
export interface Failure {
  readonly atMs: number;
  readonly message: string;
}
