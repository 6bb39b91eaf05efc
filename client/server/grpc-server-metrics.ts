import {
  status,
  type ServiceDefinition,
  type ServiceError,
  type UntypedHandleCall,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { Counter, Histogram, type Registry } from "prom-client";

/** gRPC code names as go-grpc-prometheus writes them in `grpc_code`, so existing dashboards work. */
const codeNames: Readonly<Record<number, string>> = {
  [status.OK]: "OK",
  [status.CANCELLED]: "Canceled",
  [status.UNKNOWN]: "Unknown",
  [status.INVALID_ARGUMENT]: "InvalidArgument",
  [status.DEADLINE_EXCEEDED]: "DeadlineExceeded",
  [status.NOT_FOUND]: "NotFound",
  [status.ALREADY_EXISTS]: "AlreadyExists",
  [status.PERMISSION_DENIED]: "PermissionDenied",
  [status.RESOURCE_EXHAUSTED]: "ResourceExhausted",
  [status.FAILED_PRECONDITION]: "FailedPrecondition",
  [status.ABORTED]: "Aborted",
  [status.OUT_OF_RANGE]: "OutOfRange",
  [status.UNIMPLEMENTED]: "Unimplemented",
  [status.INTERNAL]: "Internal",
  [status.UNAVAILABLE]: "Unavailable",
  [status.DATA_LOSS]: "DataLoss",
  [status.UNAUTHENTICATED]: "Unauthenticated",
};

interface ServerMetrics {
  readonly handled: Counter<"grpc_service" | "grpc_method" | "grpc_code">;
  readonly handling: Histogram<"grpc_service" | "grpc_method">;
}

/** One set of metrics per prom-client registry, shared by every service instrumented into it. */
const metricsByRegistry = new WeakMap<Registry, ServerMetrics>();

function serverMetrics(registry: Registry): ServerMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (metrics === undefined) {
    const registers = [registry];
    metrics = {
      handled: new Counter({
        name: "grpc_server_handled_total",
        help: "RPCs completed on the server, regardless of success or failure.",
        labelNames: ["grpc_service", "grpc_method", "grpc_code"],
        registers,
      }),
      handling: new Histogram({
        name: "grpc_server_handling_seconds",
        help: "Time from the start of an RPC to its status on the server, in seconds (streams: the stream's life).",
        labelNames: ["grpc_service", "grpc_method"],
        // go-grpc-prometheus uses Prometheus' default buckets; two finer ones for sub-ms handlers.
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        registers,
      }),
    };
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

/** The events every grpc-js server call emits (`ServerSurfaceCall` and its streams). */
interface ObservableCall {
  on(event: "cancelled", listener: () => void): unknown;
  on(event: "error", listener: (error: Partial<ServiceError>) => void): unknown;
  on(event: "finish", listener: () => void): unknown;
}

type UnaryCallback = (error: Partial<ServiceError> | null, ...rest: unknown[]) => void;

/**
 * Wraps every handler of `implementation` so each finished RPC counts in
 * `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}` and observes
 * `grpc_server_handling_seconds{grpc_service,grpc_method}` (the go-grpc-prometheus names; codes
 * are Go's names such as `OK`, `NotFound`, `Unavailable`), in the injected `registry`.
 * A call the client cancels counts as `Canceled`. Several services may share one registry.
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
    const labels = { grpc_service: grpcService, grpc_method: grpcMethod };
    const start = (): ((code: number) => void) => {
      const stopTimer = metrics.handling.startTimer(labels);
      let isDone = false;
      return (code) => {
        if (isDone) return;
        isDone = true;
        stopTimer();
        metrics.handled.inc({ ...labels, grpc_code: codeNames[code] ?? "Unknown" });
      };
    };
    const hasCallback = !method.responseStream;
    // grpc-js types handlers per call kind; one wrapper serves all, so it is typed loosely here.
    wrapped[name] = ((call: ObservableCall, callback?: UnaryCallback) => {
      const finish = start();
      call.on("cancelled", () => finish(status.CANCELLED));
      call.on("error", (error) => finish(error.code ?? status.UNKNOWN));
      if (hasCallback && callback !== undefined) {
        (handler as (call: ObservableCall, callback: UnaryCallback) => void)(call, (error, ...rest) => {
          finish(error === null || error === undefined ? status.OK : (error.code ?? status.UNKNOWN));
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
