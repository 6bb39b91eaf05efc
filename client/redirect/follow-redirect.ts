import {
  Client,
  credentials as grpcCredentials,
  InterceptingCall,
  status,
  type ChannelCredentials,
  type Interceptor,
  type InterceptorOptions,
  type Metadata,
  type ServiceError,
  type StatusObject,
} from "@grpc/grpc-js";
import { LRUCache } from "lru-cache";

/** Trailer naming where to send a call that an instance refused with FAILED_PRECONDITION (`host:port`). */
export const REDIRECT_METADATA_KEY = "leasehold-redirect";

/** Channels to redirect targets kept open; the least recently used beyond this is closed. */
const MAX_REDIRECT_CLIENTS = 16;

/** Options of {@link followRedirect}. */
export interface FollowRedirectOptions {
  /** Credentials of the channels to redirect targets; default insecure. */
  readonly credentials?: ChannelCredentials | undefined;
  /** Called with the target of every redirect followed (e.g. to count them). */
  readonly onRedirect?: ((target: string, path: string) => void) | undefined;
}

/** A grpc-js interceptor that also closes the channels it opened. */
export type RedirectInterceptor = Interceptor & { close(): void };

/**
 * A grpc-js client interceptor that follows a redirect once, transparently: a unary call answered
 * `FAILED_PRECONDITION` with a {@link REDIRECT_METADATA_KEY} trailer is sent again, with the same
 * message, metadata and deadline, straight to that address (one channel per address; the 16 most
 * recently used stay open until {@link RedirectInterceptor.close}), and the caller sees that second
 * answer, whatever it is (a second redirect is not followed: stale membership on both sides would
 * otherwise loop). Streaming calls pass through untouched. Used by the kv demo's client: writes sent to a backup reach the primary.
 *
 * ```ts
 * const redirects = followRedirect();
 * const kv = new KvServiceClient("leasehold:///kv", credentials.createInsecure(), { interceptors: [redirects] });
 * ```
 */
export function followRedirect(options: FollowRedirectOptions = {}): RedirectInterceptor {
  const clients = new LRUCache<string, Client>({
    max: MAX_REDIRECT_CLIENTS,
    dispose: (client) => client.close(),
  });
  const clientFor = (target: string): Client => {
    let client = clients.get(target);
    if (client === undefined) {
      client = new Client(target, options.credentials ?? grpcCredentials.createInsecure());
      clients.set(target, client);
    }
    return client;
  };
  const interceptor: Interceptor = (callOptions: InterceptorOptions, nextCall) => {
    const method = callOptions.method_definition;
    if (method.requestStream || method.responseStream) return new InterceptingCall(nextCall(callOptions));
    let request: unknown;
    let sentMetadata: Metadata | undefined;
    return new InterceptingCall(nextCall(callOptions), {
      start(metadata, listener, next) {
        sentMetadata = metadata.clone();
        next(metadata, {
          onReceiveStatus(received: StatusObject, nextStatus: (status: StatusObject) => void) {
            const target =
              received.code === status.FAILED_PRECONDITION
                ? received.metadata.get(REDIRECT_METADATA_KEY)[0]
                : undefined;
            if (typeof target !== "string" || target === "" || sentMetadata === undefined)
              return nextStatus(received);
            options.onRedirect?.(target, method.path);
            clientFor(target)
              .makeUnaryRequest(
                method.path,
                method.requestSerialize,
                method.responseDeserialize,
                request,
                sentMetadata,
                { deadline: callOptions.deadline },
                (error: ServiceError | null, response: unknown) => {
                  if (error === null) listener.onReceiveMessage(response);
                },
              )
              // Emitted after the callback, with the second call's own trailers, success or not.
              .on("status", nextStatus);
          },
        });
      },
      sendMessage(message, next) {
        request = message;
        next(message);
      },
    });
  };
  return Object.assign(interceptor, {
    close: () => {
      clients.clear(); // closes each (dispose)
    },
  });
}
