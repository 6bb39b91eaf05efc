import {
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServerWritableStream,
} from "@grpc/grpc-js";
import type { WatchResponse } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { sentMessageTally } from "../../client/server/grpc-server-metrics.js";
import type { WatchSink } from "../watch/watch-subscription.js";

/**
 * Messages a Watch stream may have handed to grpc-js and HTTP/2 but not yet written out before
 * `write()` asks to wait for `drain`: 16, grpc-js's own limit (a Node object-mode stream's
 * default `highWaterMark`), so a stream that is behind is seen as soon as before.
 */
export const WATCH_WRITES_IN_FLIGHT = 16;

/** The grpc-js call under each Watch request, by the request object the handler receives. */
const callsByRequest = new WeakMap<object, ServerInterceptingCallInterface>();

/**
 * A grpc-js server interceptor (`new Server({ interceptors: [...] })`) that lets a Watch handler
 * write to the call below grpc-js's per-stream Node `Writable` (see {@link watchSink}): that layer
 * cost a buffered write, a completion callback and a tick per message per stream, about a third
 * of grpc-js's share of the fan-out (issue 10). Other methods pass through untouched.
 */
export function watchWriteInterceptor(watchPath: string): ServerInterceptor {
  return (method, call) => {
    // No layer at all for the other methods (grpc-js composes whatever an interceptor returns).
    if (method.path !== watchPath) return call as ServerInterceptingCall;
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage: (message: unknown, nextMessage: (message: unknown) => void) => {
            if (typeof message === "object" && message !== null) callsByRequest.set(message, call);
            nextMessage(message);
          },
        }),
    });
  };
}

/**
 * The sink of a Watch stream: writes go straight to the grpc-js call below the stream's `Writable`
 * when {@link watchWriteInterceptor} serves it (counted in `grpc_server_msg_sent_total` as
 * `call.write` is), else through `call.write`. Backpressure as grpc-js's: `write()` returns false
 * with {@link WATCH_WRITES_IN_FLIGHT} messages not yet written out, and `drain` follows once all are.
 * `end` ends the stream through `call` either way (after every message already written).
 */
export function watchSink(
  call: ServerWritableStream<unknown, WatchResponse>,
  end: WatchSink["end"],
): WatchSink {
  const direct = callsByRequest.get(call.request as object);
  if (direct === undefined) {
    return {
      write: (message) => call.write(message),
      once: (event, listener) => call.once(event, listener),
      end,
    };
  }
  const sent = sentMessageTally(call);
  let inFlight = 0;
  let drained: (() => void) | undefined;
  // One callback for every write of the stream: no closure per message.
  const written = (): void => {
    inFlight -= 1;
    if (inFlight > 0 || drained === undefined) return;
    const listener = drained;
    drained = undefined;
    listener();
  };
  return {
    write: (message) => {
      inFlight += 1;
      if (sent !== undefined) sent.value++;
      direct.sendMessage(message, written);
      return inFlight < WATCH_WRITES_IN_FLIGHT;
    },
    once: (_event, listener) => {
      drained = listener;
    },
    end,
  };
}
