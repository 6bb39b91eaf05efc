import type { Server } from "@grpc/grpc-js";

/**
 * Graceful stop of a gRPC server: refuses new calls and resolves once in-flight calls finish, or
 * forces the rest closed after `graceMs`.
 */
export async function shutdownGrpcServer(server: Server, graceMs: number): Promise<void> {
  await new Promise<void>((resolve) => {
    const force = setTimeout(() => server.forceShutdown(), graceMs).unref();
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
}
