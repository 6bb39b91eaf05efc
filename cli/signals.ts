/** Resolves on the first SIGINT or SIGTERM (and removes its handlers, so a second one kills). */
export async function onShutdownSignal(): Promise<NodeJS.Signals> {
  return await new Promise((resolve) => {
    const handler = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", handler);
      process.off("SIGTERM", handler);
      resolve(signal);
    };
    process.on("SIGINT", handler);
    process.on("SIGTERM", handler);
  });
}

/**
 * Keeps the process alive until the returned function is called. A long-lived command (`watch`,
 * `serve`, `register`) exists to wait for a signal, and while its registry restarts the library's
 * reconnect and backoff timers (unref'd, so a library never pins its host process) may be its only
 * other handles.
 */
export function keepProcessAlive(): () => void {
  const timer = setInterval(() => undefined, 2 ** 30);
  return () => clearInterval(timer);
}
