/**
 * Server-reported load (ORCA, gRFC A51) as callers keep it per instance, and the two load signals
 * Leasehold's load-aware policies score by: the gRFC A58 weight (`weighted_round_robin` with
 * `orca`), and the peak EWMA of latency (`peak_ewma`). Pure: every method takes the time.
 *
 * grpc-js 1.14 has the same pieces (`orca.js` `createMetricsReader`, `load-balancer-weighted-round-robin.js`)
 * but does not export them, and its `loadOrcaProto()` never caches what it loads (`const
 * loadedOrcaProto = null`): every serialize or parse re-reads the .proto files with proto-loader,
 * measured here at 27 ms per serialize and 13 ms per parse. So the trailer is coded with our
 * ts-proto copy of `OrcaLoadReport` (proto/xds/data/orca/v3/orca_load_report.proto), about 1 µs.
 */
import { OrcaLoadReport } from "../../proto/gen/xds/data/orca/v3/orca_load_report.js";

export { OrcaLoadReport };

/** The trailer that carries a serialized `xds.data.orca.v3.OrcaLoadReport` (gRFC A51). */
export const LOAD_REPORT_TRAILER = "endpoint-load-metrics-bin";

/** Shortest time between two parses of one instance's reports, ms. */
export const REPORT_PARSE_INTERVAL_MS = 100;

/** A load report's bytes, or undefined when they do not parse (a foreign or corrupt trailer). */
export function decodeLoadReport(bytes: Uint8Array): OrcaLoadReport | undefined {
  try {
    return OrcaLoadReport.decode(bytes);
  } catch {
    return undefined;
  }
}

/** The serialized report, ready for the {@link LOAD_REPORT_TRAILER} trailer. */
export function encodeLoadReport(report: Partial<OrcaLoadReport>): Buffer {
  return Buffer.from(OrcaLoadReport.encode(OrcaLoadReport.fromPartial(report)).finish());
}

/**
 * The utilization a report states: `application_utilization` when set (> 0), else
 * `cpu_utilization` (gRFC A58's choice). A fraction; may exceed 1 past the server's soft limit.
 */
function utilizationOf(report: OrcaLoadReport): number {
  return report.applicationUtilization > 0 ? report.applicationUtilization : report.cpuUtilization;
}

/** gRFC A58's weight settings (its `WeightedRoundRobinLbConfig`, durations in ms). */
export interface OrcaWeightConfig {
  /** A new or returning instance's weight is ignored for this long after its first report. Default 10,000. */
  readonly blackoutPeriodMs: number;
  /** A weight whose last report is older than this is dropped (and the blackout starts over). Default 180,000. */
  readonly weightExpirationPeriodMs: number;
  /** Multiplier of `eps / qps` added to the utilization. Default 1.0. */
  readonly errorUtilizationPenalty: number;
  /** How often callers rebuild their picker from the current weights. Default 1,000. */
  readonly weightUpdatePeriodMs: number;
}

/**
 * The last load report of one instance, as one caller received it (on every call's trailers), and
 * gRFC A58's per-endpoint weight state.
 */
export class InstanceLoadState {
  /** The last report received; undefined until one arrives. */
  report: OrcaLoadReport | undefined;
  /** When the last report arrived, parsed or not, ms (the caller's clock): its age for freshness. */
  receivedAtMs = Number.NEGATIVE_INFINITY;
  /** When the last report was parsed, ms: {@link receive} parses at most every {@link REPORT_PARSE_INTERVAL_MS}. */
  parsedAtMs = Number.NEGATIVE_INFINITY;
  /** A58 `non_empty_since`: when the first report with a non-zero weight came, after a gap; undefined when none. */
  nonEmptySinceMs: number | undefined;
  /** A58 `last_update`: when the last report with a non-zero weight came. */
  weightUpdatedAtMs = Number.NEGATIVE_INFINITY;
  #qps = 0;
  #eps = 0;
  #utilization = 0;

  /**
   * Takes the encoded report of an answer received at `nowMs`: parsed when the last parse is at
   * least {@link REPORT_PARSE_INTERVAL_MS} old (~0.8 µs a parse), else it only confirms that the
   * last one is current (instances sample their load once a second). A report that does not parse
   * is ignored.
   */
  receive(bytes: Uint8Array, nowMs: number): void {
    if (nowMs - this.parsedAtMs < REPORT_PARSE_INTERVAL_MS) {
      this.receivedAtMs = nowMs;
      return;
    }
    const report = decodeLoadReport(bytes);
    if (report !== undefined) this.record(report, nowMs);
  }

  /** Takes a parsed report received at `nowMs`. */
  record(report: OrcaLoadReport, nowMs: number): void {
    this.report = report;
    this.receivedAtMs = nowMs;
    this.parsedAtMs = nowMs;
    const utilization = utilizationOf(report);
    if (report.rpsFractional > 0 && utilization > 0) {
      this.#qps = report.rpsFractional;
      this.#eps = report.eps;
      this.#utilization = utilization;
      this.nonEmptySinceMs ??= nowMs;
      this.weightUpdatedAtMs = nowMs;
    }
  }

  /** The reported utilization when the report is at most `maxAgeMs` old, else undefined (unknown). */
  freshUtilization(nowMs: number, maxAgeMs: number): number | undefined {
    if (this.report === undefined || nowMs - this.receivedAtMs > maxAgeMs) return undefined;
    return utilizationOf(this.report);
  }

  /** A58 reset on a reconnect: the instance goes through the blackout period again. */
  resetBlackout(): void {
    this.nonEmptySinceMs = undefined;
  }

  /**
   * gRFC A58's weight at `nowMs`: qps / (utilization + eps / qps × penalty); 0 (unknown) when no
   * report had a weight, the last is older than `weightExpirationPeriodMs` (which also restarts the
   * blackout), or the first came less than `blackoutPeriodMs` ago.
   */
  orcaWeight(nowMs: number, config: OrcaWeightConfig): number {
    if (this.nonEmptySinceMs === undefined) return 0;
    if (nowMs - this.weightUpdatedAtMs >= config.weightExpirationPeriodMs) {
      this.nonEmptySinceMs = undefined;
      return 0;
    }
    if (config.blackoutPeriodMs > 0 && nowMs - this.nonEmptySinceMs < config.blackoutPeriodMs) return 0;
    const utilization = this.#utilization + (this.#eps / this.#qps) * config.errorUtilizationPenalty;
    return this.#qps / utilization;
  }
}

/**
 * Weights where the unknown (0) ones take the mean of the known ones, as gRFC A58 does; all
 * unknown: all 1 (plain round robin). Modifies and returns `weights`.
 */
export function fillUnknownWeights(weights: Float64Array): Float64Array {
  let sum = 0;
  let known = 0;
  for (const weight of weights)
    if (weight > 0) {
      sum += weight;
      known++;
    }
  const mean = known === 0 ? 1 : sum / known;
  for (let i = 0; i < weights.length; i++) if (!((weights[i] as number) > 0)) weights[i] = mean;
  return weights;
}

/** `peak_ewma`'s settings. */
export interface PeakEwmaConfig {
  /** The EWMA's decay time constant τ, ms. Default 10,000 (Finagle's and Linkerd's). */
  readonly decayMs: number;
  /** The estimate of an instance with no answer yet, ms. Default 30 (Linkerd's `DEFAULT_EWMA_DEFAULT_RTT`). */
  readonly defaultRttMs: number;
}

/**
 * A peak-sensitive EWMA of latency, as Finagle's `PeakEwma` and tower's `load::PeakEwma` (which
 * Linkerd's balancer uses): a sample above the estimate replaces it at once (the peak); a sample
 * below pulls it down by the weight 1 − e^(−Δt/τ), Δt being the time since the last update; and
 * when read, the estimate decays toward 0 the same way, so an instance that was slow gets tried
 * again after a while (tower's `RttEstimate::decay`).
 */
export class PeakEwma {
  /** The estimate, ms; undefined until the first answer. */
  #rttMs: number | undefined;
  #updatedAtMs = 0;

  /** Takes an answer's round trip `rttMs` (ms) seen at `nowMs` (ms), with decay constant τ = `decayMs` (ms). */
  observe(rttMs: number, nowMs: number, decayMs: number): void {
    const current = this.#rttMs;
    if (current === undefined || rttMs > current) this.#rttMs = rttMs;
    else {
      const decay = Math.exp(-Math.max(0, nowMs - this.#updatedAtMs) / decayMs);
      this.#rttMs = current * decay + rttMs * (1 - decay);
    }
    this.#updatedAtMs = nowMs;
  }

  /** The estimate at `nowMs`, ms: decayed toward 0 since the last answer; `config.defaultRttMs` before any. */
  estimateMs(nowMs: number, config: PeakEwmaConfig): number {
    if (this.#rttMs === undefined) return config.defaultRttMs;
    return this.#rttMs * Math.exp(-Math.max(0, nowMs - this.#updatedAtMs) / config.decayMs);
  }
}
