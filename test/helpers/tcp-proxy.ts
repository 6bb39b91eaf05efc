import { createServer, connect, type Socket } from "node:net";

/** A loopback TCP proxy whose connections a test can cut and let back. */
export interface TcpProxy {
  /** `http://127.0.0.1:PORT`, to use instead of the target's endpoint. */
  readonly endpoint: string;
  /** Destroys every open connection and refuses new ones until {@link restore}. */
  cut(): void;
  /** Accepts connections again. */
  restore(): void;
  /** Closes the listener and every connection. Idempotent. */
  close(): Promise<void>;
}

/** Starts a proxy on a free loopback port that forwards to `target` (`http://host:port`). */
export async function startTcpProxy(target: string): Promise<TcpProxy> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  let isCut = false;
  const server = createServer((downstream) => {
    if (isCut) {
      downstream.destroy();
      return;
    }
    const upstream = connect(Number(port), hostname);
    for (const socket of [downstream, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        downstream.destroy();
        upstream.destroy();
      });
    }
    downstream.pipe(upstream).pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("proxy has no port");
  const destroyAll = () => {
    for (const socket of sockets) socket.destroy();
  };
  let closing: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    cut: () => {
      isCut = true;
      destroyAll();
    },
    restore: () => {
      isCut = false;
    },
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        destroyAll();
        server.close(() => resolve());
      })),
  };
}
