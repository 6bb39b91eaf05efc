/**
 * The service side of ORCA (gRFC A51): every call an instance answers carries its load report in
 * the `endpoint-load-metrics-bin` trailer, so callers can pick by load (`least_loaded`,
 * `weighted_round_robin` with `orca`).
 *
 * grpc-js 1.14 can attach the trailer itself (server option `grpc.server_call_metric_recording`
 * plus `call.getMetricsRecorder()` in each handler), but its recorder re-loads the ORCA .proto
 * files on every serialize (27 ms per call, measured here; see client/balancing/load-report.ts), and
 * each handler would have to record. So a server interceptor attaches our own encoding instead,
 * for every method at once. Do not also set `grpc.server_call_metric_recording`: grpc-js would then
 * overwrite the trailer with its own (empty) report.
 */
import { Metadata, ServerInterceptingCall, status as Status, type ServerInterceptor } from "@grpc/grpc-js";
import { encodeLoadReport, LOAD_REPORT_TRAILER, type OrcaLoadReport } from "../balancing/load-report.js";

/** A simulated CPU utilization: a fixed fraction, or a range a new value is drawn from every sample. */
export type SimulatedCpu = number | readonly [min: number, max: number];

/** Options of {@link LoadReporter}. */
export interface LoadReporterOptions {
  /** How often CPU use, qps and eps are sampled, ms. Default 1,000. */
  readonly sampleIntervalMs?: number | undefined;
  /** qps and eps are averaged over this many samples. Default 5. */
  readonly windowSamples?: number | undefined;
  /**
   * Report this CPU utilization (0..1) instead of the measured one (the demo services'
   * `--simulate-cpu`). A range draws a new uniform value from it every sample.
   */
  readonly simulateCpu?: SimulatedCpu | undefined;
  /** Uniform in [0, 1), for the simulated range. Default `Math.random`. */
  readonly random?: (() => number) | undefined;
}

/**
 * Produces an instance's ORCA load reports: `cpu_utilization` from the process's real CPU use
 * (`process.cpuUsage()` over the last sample, as a fraction of one core, the most a Node.js
 * process's JavaScript can use) or a simulated value; `rps_fractional` and `eps` (answers and
 * non-OK answers per second, over the last `windowSamples` samples); `named_metrics.in_flight`
 * (calls in progress now); and whatever the application sets (`application_utilization`, named
 * utilizations). Install {@link interceptor} on the gRPC server, then {@link start}; {@link close}
 * is idempotent.
 */
export class LoadReporter {
  readonly #sampleIntervalMs: number;
  readonly #windowSamples: number;
  readonly #simulateCpu: SimulatedCpu | undefined;
  readonly #random: () => number;
  #timer: NodeJS.Timeout | undefined;
  #inFlight = 0;
  #answers = 0;
  #errors = 0;
  /** Per sample: [answers, errors, elapsed ms]. */
  #samples: [number, number, number][] = [];
  #lastCpu = process.cpuUsage();
  #lastSampleMs = performance.now();
  #cpuUtilization = 0;
  #qps = 0;
  #eps = 0;
  #applicationUtilization = 0;
  readonly #utilization: Record<string, number> = {};
  readonly #namedMetrics: Record<string, number> = {};
  /** Encoded reports by in-flight count, until the next sample or setting (encoding costs ~4.6 µs). */
  readonly #encoded = new Map<number, Buffer>();

  /** @throws RangeError for a simulated CPU outside 0..1 or an interval that is not positive. */
  constructor(options: LoadReporterOptions = {}) {
    this.#sampleIntervalMs = options.sampleIntervalMs ?? 1000;
    this.#windowSamples = options.windowSamples ?? 5;
    if (!(this.#sampleIntervalMs > 0) || !Number.isInteger(this.#windowSamples) || this.#windowSamples < 1)
      throw new RangeError("sampleIntervalMs must be > 0 and windowSamples an integer ≥ 1");
    const simulated = options.simulateCpu;
    const values =
      simulated === undefined ? [] : typeof simulated === "number" ? [simulated] : [...simulated];
    if (values.some((v) => !(v >= 0 && v <= 1)) || (values.length === 2 && values[0]! > values[1]!))
      throw new RangeError(
        `simulated CPU must be 0..1 or a range MIN-MAX within it, got ${String(simulated)}`,
      );
    this.#simulateCpu = simulated;
    this.#random = options.random ?? Math.random;
    this.#cpuUtilization = this.#simulatedCpu() ?? 0;
  }

  /** Starts sampling. */
  start(): void {
    if (this.#timer !== undefined) return;
    this.#lastCpu = process.cpuUsage();
    this.#lastSampleMs = performance.now();
    this.#timer = setInterval(() => this.sample(), this.#sampleIntervalMs);
    this.#timer.unref(); // bookkeeping: the server keeps the process alive
  }

  /** Stops sampling the CPU; idempotent. Reports keep the last sample. */
  close(): void {
    clearInterval(this.#timer);
  }

  /** `application_utilization` (≥ 0; may exceed 1), or undefined to report none (callers then use CPU). */
  setApplicationUtilization(value: number | undefined): void {
    this.#applicationUtilization = value ?? 0;
    this.#encoded.clear();
  }

  /** A named utilization (0..1, not checked: it is reported as given), or undefined to drop it. */
  setUtilization(name: string, value: number | undefined): void {
    if (value === undefined) delete this.#utilization[name];
    else this.#utilization[name] = value;
    this.#encoded.clear();
  }

  /** Calls in progress now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Takes one sample (the timer calls it every `sampleIntervalMs`; tests may call it directly). */
  sample(): void {
    const nowMs = performance.now();
    const elapsedMs = Math.max(nowMs - this.#lastSampleMs, 1);
    const cpu = process.cpuUsage(this.#lastCpu);
    this.#lastCpu = process.cpuUsage();
    this.#lastSampleMs = nowMs;
    this.#cpuUtilization = this.#simulatedCpu() ?? (cpu.user + cpu.system) / 1000 / elapsedMs;
    this.#samples.push([this.#answers, this.#errors, elapsedMs]);
    this.#answers = 0;
    this.#errors = 0;
    if (this.#samples.length > this.#windowSamples) this.#samples.shift();
    let answers = 0;
    let errors = 0;
    let ms = 0;
    for (const [a, e, m] of this.#samples) {
      answers += a;
      errors += e;
      ms += m;
    }
    this.#qps = (answers * 1000) / ms;
    this.#eps = (errors * 1000) / ms;
    this.#encoded.clear();
  }

  /** The report a call ending now carries. */
  report(): Partial<OrcaLoadReport> {
    return {
      cpuUtilization: this.#cpuUtilization,
      applicationUtilization: this.#applicationUtilization,
      rpsFractional: this.#qps,
      eps: this.#eps,
      utilization: this.#utilization,
      namedMetrics: { ...this.#namedMetrics, in_flight: this.#inFlight },
    };
  }

  /** A grpc-js server interceptor: counts calls and adds the report to every call's trailers. */
  readonly interceptor: ServerInterceptor = (_method, call) => {
    let isDone = false;
    const done = (code: number | undefined): void => {
      if (isDone) return;
      isDone = true;
      this.#inFlight--;
      this.#answers++;
      if (code !== Status.OK) this.#errors++;
    };
    return new ServerInterceptingCall(call, {
      start: (next) => {
        this.#inFlight++;
        next({ onCancel: () => done(undefined) });
      },
      sendStatus: (status, next) => {
        done(status.code);
        const trailers = status.metadata?.clone() ?? new Metadata();
        let encoded = this.#encoded.get(this.#inFlight);
        if (encoded === undefined)
          this.#encoded.set(this.#inFlight, (encoded = encodeLoadReport(this.report())));
        trailers.set(LOAD_REPORT_TRAILER, encoded);
        next({ ...status, metadata: trailers });
      },
    });
  };

  #simulatedCpu(): number | undefined {
    const simulated = this.#simulateCpu;
    if (simulated === undefined || typeof simulated === "number") return simulated;
    return simulated[0] + this.#random() * (simulated[1] - simulated[0]);
  }
}
