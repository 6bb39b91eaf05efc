import {
  Client,
  credentials,
  Metadata,
  status,
  type ClientReadableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import { Backoff } from "../../client/backoff.js";
import { describeConnectFailure } from "../registry-check.js";
import { decodeHealthStatus, encodeHealthRequest, HealthStatus, healthStatusName } from "../health-codec.js";

/** What the target said last: serving or not, and why in words ("NOT_SERVING", "unreachable: ..."). */
export interface TargetHealth {
  readonly isServing: boolean;
  readonly reason: string;
}

/** Options of {@link TargetHealthWatcher}. */
export interface TargetHealthWatcherOptions {
  /** host:port of the target. */
  readonly address: string;
  /** The service name asked about; "" is the whole server (grpc.health.v1's convention). */
  readonly service: string;
  /** Called on every change of {@link TargetHealth} (not on repeats). */
  readonly changed: (health: TargetHealth) => void;
  /** Interval of `Check` polling for a target without `Watch`; default 5000. */
  readonly pollIntervalMs?: number;
  /** Reconnect backoff; default 100 ms × 1.6 up to 5 s, full jitter. */
  readonly backoff?: Backoff;
}

/** Codes of a target that answers but will never serve `Health/Watch`. */
const NO_WATCH: ReadonlySet<number> = new Set([status.UNIMPLEMENTED]);

/**
 * Follows a target's `grpc.health.v1.Health/Watch` stream: SERVING is serving; NOT_SERVING,
 * SERVICE_UNKNOWN, UNKNOWN, an unreachable target or a broken stream are not. A lost stream is
 * reopened with backoff for as long as the watcher runs (it never gives up: the target may be
 * restarting). A target without `Watch` (UNIMPLEMENTED) is polled with `Check` instead.
 *
 * start() → (changed …) → close(); close() is idempotent and clears every timer and stream.
 */
export class TargetHealthWatcher {
  readonly #options: Required<Omit<TargetHealthWatcherOptions, "backoff">>;
  readonly #backoff: Backoff;
  #client: Client | undefined;
  #stream: ClientReadableStream<number> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #last: TargetHealth | undefined;
  #isClosed = false;

  constructor(options: TargetHealthWatcherOptions) {
    this.#options = { pollIntervalMs: 5000, ...options };
    this.#backoff = options.backoff ?? new Backoff({ initialDelayMs: 100, maxDelayMs: 5000 });
  }

  /** The last health reported, or undefined before the first answer. */
  get health(): TargetHealth | undefined {
    return this.#last;
  }

  start(): void {
    if (this.#isClosed || this.#client !== undefined) return;
    this.#client = new Client(this.#options.address, credentials.createInsecure());
    this.#watch();
  }

  close(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    clearTimeout(this.#timer);
    this.#stream?.cancel();
    this.#stream = undefined;
    this.#client?.close();
  }

  #watch(): void {
    const client = this.#client;
    if (this.#isClosed || client === undefined) return;
    const stream = client.makeServerStreamRequest(
      "/grpc.health.v1.Health/Watch",
      encodeHealthRequest,
      decodeHealthStatus,
      this.#options.service,
      new Metadata(),
      {},
    );
    this.#stream = stream;
    let isOver = false;
    const over = (error: ServiceError | undefined): void => {
      if (isOver || stream !== this.#stream) return;
      isOver = true;
      this.#stream = undefined;
      if (this.#isClosed) return;
      if (error !== undefined && NO_WATCH.has(error.code)) {
        this.#check();
        return;
      }
      this.#report({
        isServing: false,
        reason: error === undefined ? "health stream ended" : unreachable(error),
      });
      this.#schedule(() => this.#watch(), this.#backoff.next());
    };
    stream.on("data", (value: number) => {
      this.#backoff.reset();
      this.#report({ isServing: value === HealthStatus.SERVING, reason: healthStatusName(value) });
    });
    stream.on("error", (error: ServiceError) => over(error));
    stream.on("end", () => over(undefined));
  }

  /** One `Check`, then the next one after the poll interval (or the backoff after a failure). */
  #check(): void {
    const client = this.#client;
    if (this.#isClosed || client === undefined) return;
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      encodeHealthRequest,
      decodeHealthStatus,
      this.#options.service,
      new Metadata(),
      { deadline: new Date(Date.now() + Math.min(this.#options.pollIntervalMs, 5000)) },
      (error, value) => {
        if (this.#isClosed) return;
        if (error === null) {
          this.#backoff.reset();
          const current = value ?? HealthStatus.UNKNOWN;
          this.#report({ isServing: current === HealthStatus.SERVING, reason: healthStatusName(current) });
          this.#schedule(() => this.#check(), this.#options.pollIntervalMs);
          return;
        }
        this.#report({
          isServing: false,
          reason:
            error.code === status.UNIMPLEMENTED
              ? "it does not implement grpc.health.v1.Health"
              : unreachable(error),
        });
        this.#schedule(() => this.#check(), Math.max(this.#backoff.next(), 1000));
      },
    );
  }

  #schedule(run: () => void, delayMs: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(run, delayMs);
  }

  #report(health: TargetHealth): void {
    if (this.#last?.isServing === health.isServing && this.#last.reason === health.reason) return;
    this.#last = health;
    this.#options.changed(health);
  }
}

function unreachable(error: ServiceError): string {
  return error.code === status.UNAVAILABLE || error.code === status.DEADLINE_EXCEEDED
    ? `unreachable: ${describeConnectFailure(error)}`
    : `${status[error.code] ?? String(error.code)}: ${describeConnectFailure(error)}`;
}
