/**
 * What the web console reads from one instance's (or caller's) Prometheus text exposition: the
 * calls it has served, and the services its caller-side balancer is in panic mode for.
 */
export interface ScrapedCounters {
  /** Sum of `grpc_server_handled_total` over every label set; `undefined` when the family is absent. */
  readonly handledTotal: number | undefined;
  /** `service` label of every `leasehold_client_panic_mode` sample equal to 1 (callers only). */
  readonly panicServices: readonly string[];
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/;

/**
 * Reads {@link ScrapedCounters} from Prometheus text format 0.0.4 (the subset our own exporters
 * write: one sample per line, no timestamps needed). Pure.
 */
export function readScrapedCounters(text: string): ScrapedCounters {
  let handledTotal: number | undefined;
  const panicServices: string[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const sample = SAMPLE.exec(line);
    if (sample === null) continue;
    const [, name, labels = "", rawValue = ""] = sample;
    const value = Number(rawValue);
    if (name === "grpc_server_handled_total" && Number.isFinite(value)) {
      handledTotal = (handledTotal ?? 0) + value;
    } else if (name === "leasehold_client_panic_mode" && value === 1) {
      const service = /(?:^|[{,])service="((?:[^"\\]|\\.)*)"/.exec(labels)?.[1];
      if (service !== undefined) panicServices.push(service);
    }
  }
  return { handledTotal, panicServices };
}

/**
 * A counter turned into a per-second rate between two scrapes. `undefined` for the first sample
 * and after a reset (the counter went down: the process restarted), as Prometheus' `rate()` would
 * need a second sample too.
 */
export function counterRate(
  previous: { readonly total: number; readonly atMs: number } | undefined,
  total: number,
  atMs: number,
): number | undefined {
  if (previous === undefined || total < previous.total || atMs <= previous.atMs) return undefined;
  return ((total - previous.total) * 1000) / (atMs - previous.atMs);
}
