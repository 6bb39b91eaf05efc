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
