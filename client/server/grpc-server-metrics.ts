import {
  status,
  type ServiceDefinition,
  type ServiceError,
  type UntypedHandleCall,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { Counter, Histogram, type Registry } from "prom-client";
import { metricCodeLabel } from "../errors.js";
import { type CounterTally, HistogramTally, writeCounter, writeHistogram } from "../metrics/tally.js";

/** go-grpc-prometheus's `grpc_type` of a method. */
type GrpcType = "unary" | "client_stream" | "server_stream" | "bidi_stream";
type MethodLabel = "grpc_type" | "grpc_service" | "grpc_method";
type HandledLabel = MethodLabel | "grpc_code";

/** Prometheus' default buckets plus sub-millisecond ones: a local handler answers in 50-500 µs, and with 1 ms as the lowest bucket every p99 read 0.99 ms. */
const HANDLING_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** gRPC status codes run 0 (OK) to 16 (UNAUTHENTICATED); any other number counts as UNKNOWN (2), as {@link metricCodeLabel} labels it. */
const STATUS_CODES = 17;

/** One method's series, resolved when its handler is wrapped; a call only bumps numbers here. */
class MethodTally {
  readonly started: CounterTally<MethodLabel>;
  readonly received: CounterTally<MethodLabel>;
  readonly sent: CounterTally<MethodLabel>;
  /** By status code number; made on first use of a code. */
  readonly handled: (CounterTally<HandledLabel> | undefined)[] = new Array<
    CounterTally<HandledLabel> | undefined
  >(STATUS_CODES).fill(undefined);
  readonly handling: HistogramTally<MethodLabel>;

  constructor(readonly labels: Readonly<Record<MethodLabel, string>>) {
    this.started = { labels, value: 0 };
    this.received = { labels, value: 0 };
    this.sent = { labels, value: 0 };
    this.handling = new HistogramTally(labels, HANDLING_BUCKETS);
  }

  /** Counts one finished call with status `code` (a number) that took `seconds`. */
  finish(code: number, seconds: number): void {
    const index = Number.isInteger(code) && code >= 0 && code < STATUS_CODES ? code : status.UNKNOWN;
    let handled = this.handled[index];
    if (handled === undefined) {
      handled = { labels: { ...this.labels, grpc_code: metricCodeLabel(index) }, value: 0 };
      this.handled[index] = handled;
    }
    handled.value++;
    this.handling.observe(seconds);
  }
}

/** The go-grpc-prometheus metrics of one registry, read from the method tallies at each scrape. */
interface ServerMetrics {
  /** By `grpc_type/grpc_service/grpc_method`: services wrapped twice into one registry share them. */
  readonly methods: Map<string, MethodTally>;
}

/** One set of metrics per prom-client registry, shared by every service instrumented into it. */
const metricsByRegistry = new WeakMap<Registry, ServerMetrics>();

function serverMetrics(registry: Registry): ServerMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (metrics === undefined) {
    const methods = new Map<string, MethodTally>();
    const registers = [registry];
    const labelNames: MethodLabel[] = ["grpc_type", "grpc_service", "grpc_method"];
    const counter = (name: string, help: string, series: (tally: MethodTally) => CounterTally<MethodLabel>) =>
      new Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          writeCounter(this, Array.from(methods.values(), series));
        },
      });
    counter("grpc_server_started_total", "RPCs started on the server.", (tally) => tally.started);
    new Counter({
      name: "grpc_server_handled_total",
      help: "RPCs completed on the server, regardless of success or failure.",
      labelNames: [...labelNames, "grpc_code"],
      registers,
      collect() {
        writeCounter(
          this,
          Array.from(methods.values()).flatMap((tally) =>
            tally.handled.filter((series) => series !== undefined),
          ),
        );
      },
    });
    counter(
      "grpc_server_msg_received_total",
      "Stream messages received on the server (1 per unary or server-stream RPC).",
      (tally) => tally.received,
    );
    counter(
      "grpc_server_msg_sent_total",
      "Stream messages sent by the server (1 per successful unary or client-stream RPC).",
      (tally) => tally.sent,
    );
    new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time from the start of an RPC to its status on the server, in seconds (streams: the stream's life).",
      labelNames,
      buckets: HANDLING_BUCKETS,
      registers,
      collect() {
        writeHistogram(
          this,
          Array.from(methods.values(), (tally) => tally.handling),
        );
      },
    });
    metrics = { methods };
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

/** The events every grpc-js server call emits (`ServerSurfaceCall` and its streams). */
interface ObservableCall {
  on(event: "cancelled", listener: () => void): unknown;
  on(event: "data", listener: () => void): unknown;
  on(event: "error", listener: (error: Partial<ServiceError>) => void): unknown;
  on(event: "finish", listener: () => void): unknown;
  write?: (...args: unknown[]) => boolean;
}

/** The `grpc_server_msg_sent_total` tally of each server-streaming call, for writes that bypass `call.write`. */
const sentTallies = new WeakMap<object, CounterTally<MethodLabel>>();

/**
 * The tally that counts the messages `call` sends (`grpc_server_msg_sent_total`), for a handler
 * that writes below `call.write` (registry/api/watch-writer.ts); `undefined` when `call` is not
 * a server-streaming call of an {@link instrumentService} implementation.
 */
export function sentMessageTally(call: object): { value: number } | undefined {
  return sentTallies.get(call);
}

type UnaryCallback = (error: Partial<ServiceError> | null, ...rest: unknown[]) => void;

/**
 * Wraps every handler of `implementation` with the go-grpc-prometheus server metrics, in the
 * injected `registry`, labelled `{grpc_type, grpc_service, grpc_method}` (`grpc_type` is `unary`,
 * `client_stream`, `server_stream` or `bidi_stream`):
 * `grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`, `grpc_server_msg_received_total`,
 * `grpc_server_msg_sent_total` and the histogram `grpc_server_handling_seconds` (100 µs to 10 s).
 * Codes use Go's spelling (`OK`, `Unavailable`; see {@link metricCodeLabel}), as every Leasehold
 * metric does. A call the client cancels counts as `Canceled`. Several services may share one
 * registry. Received stream messages are counted on `data`; a handler that reads with `for await`
 * or `read()` is unaffected (`readable` takes precedence over `data`, as Node's stream docs say).
 *
 * @returns an implementation of the same shape, to pass to `server.addService(definition, ...)`.
 */
export function instrumentService<T extends UntypedServiceImplementation>(
  definition: ServiceDefinition,
  implementation: T,
  registry: Registry,
): T {
  const metrics = serverMetrics(registry);
  const wrapped: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(implementation)) {
    const method = definition[name];
    if (method === undefined) {
      wrapped[name] = handler;
      continue;
    }
    const [grpcService = "", grpcMethod = name] = method.path.slice(1).split("/");
    const grpcType: GrpcType = method.requestStream
      ? method.responseStream
        ? "bidi_stream"
        : "client_stream"
      : method.responseStream
        ? "server_stream"
        : "unary";
    const labels = { grpc_type: grpcType, grpc_service: grpcService, grpc_method: grpcMethod };
    const key = `${grpcType}/${grpcService}/${grpcMethod}`;
    let tally = metrics.methods.get(key);
    if (tally === undefined) metrics.methods.set(key, (tally = new MethodTally(labels)));
    const series = tally;
    const start = (): ((code: number) => void) => {
      series.started.value++;
      const startedMs = performance.now();
      let isDone = false;
      return (code) => {
        if (isDone) return;
        isDone = true;
        series.finish(code, (performance.now() - startedMs) / 1000);
      };
    };
    // grpc-js types handlers per call kind; one wrapper serves all, so it is typed loosely here.
    wrapped[name] = ((call: ObservableCall, callback?: UnaryCallback) => {
      const finish = start();
      call.on("cancelled", () => finish(status.CANCELLED));
      call.on("error", (error) => finish(error.code ?? status.UNKNOWN));
      if (method.requestStream) call.on("data", () => series.received.value++);
      else series.received.value++;
      if (method.responseStream && call.write !== undefined) {
        sentTallies.set(call, series.sent);
        const write = call.write.bind(call);
        call.write = (...args: unknown[]) => {
          series.sent.value++;
          return write(...args);
        };
      }
      if (!method.responseStream && callback !== undefined) {
        (handler as (call: ObservableCall, callback: UnaryCallback) => void)(call, (error, ...rest) => {
          const isOk = error === null || error === undefined;
          if (isOk) series.sent.value++;
          finish(isOk ? status.OK : (error.code ?? status.UNKNOWN));
          callback(error, ...rest);
        });
      } else {
        call.on("finish", () => finish(status.OK));
        (handler as (call: ObservableCall) => void)(call);
      }
    }) as UntypedHandleCall;
  }
  return wrapped as T;
}
