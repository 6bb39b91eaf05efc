import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

/** A host and port, e.g. from `127.0.0.1:0` or `[::]:7100`. */
export interface HostPort {
  /** As written, brackets kept for IPv6 (`[::]`). */
  readonly host: string;
  readonly port: number;
}

/**
 * Splits `host:port` (IPv6 as `[::1]:port`; port 0 picks a free one).
 * @throws RangeError naming the bad value.
 */
export function splitHostPort(value: string): HostPort {
  const match = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]\s]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (match === null || match[1] === undefined || port > 65_535) {
    throw new RangeError(`"${value}" is not host:port`);
  }
  return { host: match[1], port };
}

/** What a route answers. */
export interface HttpAnswer {
  readonly status: number;
  readonly contentType: string;
  readonly body: string;
}

/**
 * A streamed answer, e.g. server-sent events: after the status and headers are written, `open`
 * writes to `response` (honouring `write()` false → `drain`) until `signal` aborts, which it does
 * when the client goes or the server closes. For HEAD only the head is sent.
 */
export interface HttpStream {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  open(response: ServerResponse, signal: AbortSignal): void;
}

/** Answers of GET paths, e.g. `{ "/metrics": metricsRoute(registry) }`. */
export type HttpRoutes = Readonly<
  Record<string, () => HttpAnswer | HttpStream | Promise<HttpAnswer | HttpStream>>
>;

/**
 * Takes a request before the GET routes, e.g. an API under a path prefix (any method); returns
 * `true` when it answers the request itself.
 */
export type HttpHandler = (request: IncomingMessage, response: ServerResponse) => boolean;

/** A running HTTP server of {@link startHttpEndpoints}. */
export interface HttpEndpoints {
  /** host:port it is bound to (real port). */
  readonly address: string;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

/** The `/metrics` route: Prometheus text exposition of `registry`. */
export function metricsRoute(registry: Registry): () => Promise<HttpAnswer> {
  return async () => ({ status: 200, contentType: registry.contentType, body: await registry.metrics() });
}

/**
 * Serves `routes` over plain HTTP on `listen` (GET and HEAD; 404 for other paths, 405 for other
 * methods, 500 with no details when a route throws), after `handler` (if any) declined the request.
 * Streamed answers ({@link HttpStream}) stay open until their client goes; `close()` ends them.
 * @throws the listen error (EADDRINUSE ...).
 */
export async function startHttpEndpoints(
  listen: HostPort | string,
  routes: HttpRoutes,
  handler?: HttpHandler,
): Promise<HttpEndpoints> {
  const { host, port } = typeof listen === "string" ? splitHostPort(listen) : listen;
  const server = createServer((request, response) => {
    if (handler?.(request, response) === true) return;
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    const route = routes[new URL(request.url ?? "/", "http://endpoint").pathname];
    if (route === undefined) {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    Promise.resolve()
      .then(route)
      .then(
        (answer) => {
          if (!("open" in answer)) {
            response.writeHead(answer.status, { "content-type": answer.contentType }).end(answer.body);
            return;
          }
          response.writeHead(answer.status, answer.headers);
          if (request.method === "HEAD") {
            response.end();
            return;
          }
          const stop = new AbortController();
          response.once("close", () => stop.abort());
          answer.open(response, stop.signal);
        },
        () => {
          if (!response.headersSent) response.writeHead(500);
          response.end();
        },
      );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host.replace(/^\[(.*)\]$/, "$1"), () => {
      server.off("error", reject);
      resolve();
    });
  });
  let closing: Promise<void> | undefined;
  return {
    address: `${host}:${(server.address() as AddressInfo).port}`,
    close: async () =>
      await (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
