import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { Registry } from "prom-client";
import { isTlsOn, tlsServerOptions, watchTlsFiles, type TlsFiles } from "../tls/tls-files.js";
import { splitHostPort, type HostPort } from "./host-port.js";

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
 * `true` when it answers the request itself. Only requests with a well-formed target reach it.
 */
export type HttpHandler = (request: IncomingMessage, response: ServerResponse) => boolean;

/** A running HTTP server of {@link startHttpEndpoints}. */
export interface HttpEndpoints {
  /** host:port it is bound to (real port). */
  readonly address: string;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

/**
 * The `/metrics` route: Prometheus text exposition of `registry`. Requests that arrive while a
 * rendering is under way share it (pipelined or concurrent requests render once, not once each).
 */
export function metricsRoute(registry: Registry): () => Promise<HttpAnswer> {
  let rendering: Promise<HttpAnswer> | undefined;
  return async () =>
    await (rendering ??= registry
      .metrics()
      .then((body) => ({ status: 200, contentType: registry.contentType, body }))
      .finally(() => (rendering = undefined)));
}

/**
 * Node's own HTTP limits, set on purpose rather than left at Node's defaults (60 s headers, 300 s
 * request, no idle timeout): a client that sends its headers slower than this (slowloris) is
 * answered 408 and disconnected, and headers above `maxHeaderSize` are answered 431.
 */
export const httpLimits = Object.freeze({
  /** Time to receive the whole request head, ms (Node's default 60 s). */
  headersTimeoutMs: 10_000,
  /** Time to receive the whole request, ms (Node's default 300 s); only the registry's HTTP API takes bodies, ≤ 64 KiB. */
  requestTimeoutMs: 15_000,
  /** Idle time of a kept-alive connection between requests, ms (Node's default 5 s). */
  keepAliveTimeoutMs: 5_000,
  /** How often the two timeouts above are checked, ms (Node's default 30 s makes them coarse). */
  connectionsCheckingIntervalMs: 1_000,
  /** Request line plus headers, bytes (Node's default 16 KiB). */
  maxHeaderSizeBytes: 16 * 1024,
  /**
   * Requests served on one connection before it is closed; later pipelined ones get 503. Bounds
   * the answers one received packet can queue (each /metrics answer is tens of KiB).
   */
  maxRequestsPerSocket: 100,
  /** Open connections; more are closed at once (a scraper or console needs one each). */
  maxConnections: 256,
});

/** The path of a request target (origin form `/p?q` or absolute form `http://h/p`); undefined if malformed. */
function requestPath(target: string | undefined): string | undefined {
  if (target === undefined || target === "") return undefined;
  if (!URL.canParse(target, "http://endpoint")) return undefined;
  return new URL(target, "http://endpoint").pathname;
}

/**
 * Answers a request the HTTP parser refused (malformed request line or headers, smuggling
 * attempts such as both Content-Length and Transfer-Encoding, oversized headers, slow headers)
 * with 400, 431 or 408 when the socket can still take it, then destroys the socket.
 */
function refuseClient(error: Error & { code?: string }, socket: Socket): void {
  if (socket.writable && error.code !== "ECONNRESET") {
    const status =
      error.code === "HPE_HEADER_OVERFLOW"
        ? "431 Request Header Fields Too Large"
        : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? "408 Request Timeout"
          : "400 Bad Request";
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  }
  socket.destroy();
}

/**
 * Serves `routes` over plain HTTP on `listen` (GET and HEAD; 400 for a malformed request target or
 * request, 404 for other paths, 405 for other methods, 500 with no details when a route throws),
 * within {@link httpLimits}, after `handler` (if any) declined the request. No request, however
 * malformed, throws out of the server. Streamed answers ({@link HttpStream}) stay open until their
 * client goes; `close()` ends them. With `tls` (cert and key, see {@link TlsFiles}) it serves HTTPS
 * instead, requiring a client certificate when a CA is given; the files are re-read every 60 s and
 * a changed certificate serves new connections.
 * @throws the listen error (EADDRINUSE ...); TlsConfigError for unreadable TLS files.
 */
export async function startHttpEndpoints(
  listen: HostPort | string,
  routes: HttpRoutes,
  tls?: TlsFiles,
  handler?: HttpHandler,
): Promise<HttpEndpoints> {
  const { host, port } = typeof listen === "string" ? splitHostPort(listen) : listen;
  const limits = {
    headersTimeout: httpLimits.headersTimeoutMs,
    requestTimeout: httpLimits.requestTimeoutMs,
    keepAliveTimeout: httpLimits.keepAliveTimeoutMs,
    connectionsCheckingInterval: httpLimits.connectionsCheckingIntervalMs,
    maxHeaderSize: httpLimits.maxHeaderSizeBytes,
  };
  const handle = (request: IncomingMessage, response: ServerResponse) => {
    try {
      if (requestPath(request.url) !== undefined && handler?.(request, response) === true) return;
      answer(routes, request, response);
    } catch {
      if (!response.headersSent) response.writeHead(500);
      response.end();
    }
  };
  let stopTlsReload = () => {};
  const server = isTlsOn(tls)
    ? createHttpsServer({ ...limits, ...tlsServerOptions(tls) }, handle)
    : createServer(limits, handle);
  if (isTlsOn(tls) && "setSecureContext" in server) {
    stopTlsReload = watchTlsFiles(tls, (options) => server.setSecureContext(options));
  }
  server.maxRequestsPerSocket = httpLimits.maxRequestsPerSocket;
  server.maxConnections = httpLimits.maxConnections;
  server.on("clientError", refuseClient);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host.replace(/^\[(.*)\]$/, "$1"), () => {
      server.off("error", reject);
      resolve();
    });
  });
  let closing: Promise<void> | undefined;
  // A server-level error after listen (e.g. EMFILE on accept) must not end the process.
  server.on("error", () => undefined);
  return {
    address: `${host}:${(server.address() as AddressInfo).port}`,
    close: async () =>
      await (closing ??= new Promise<void>((resolve) => {
        stopTlsReload();
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}

function answer(routes: HttpRoutes, request: IncomingMessage, response: ServerResponse): void {
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD" }).end();
    return;
  }
  const path = requestPath(request.url);
  if (path === undefined) {
    response
      .writeHead(400, { "content-type": "text/plain", connection: "close" })
      .end("bad request target\n");
    return;
  }
  const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
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
    )
    .catch(() => response.destroy());
}
