import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { get as httpsGet } from "node:https";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A single-member etcd on free loopback ports with a temporary data dir. */
export interface LocalEtcd {
  /** Client URL, e.g. `http://127.0.0.1:41379` (`https://` with TLS). */
  readonly endpoint: string;
  readonly process: ChildProcess;
  /** Kills etcd (SIGKILL) and removes its data dir. Idempotent. */
  stop(): Promise<void>;
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts `etcd` (from PATH, or `LEASEHOLD_ETCD_BIN`) on free loopback ports and waits until its
 * `/health` answers. Another etcd may already run on this machine, so ports are never fixed.
 *
 * With `tls` (PEM files: etcd's server certificate and key, and the CA of its clients), clients
 * reach it over HTTPS and must present a certificate signed by that CA (`--client-cert-auth`).
 *
 * @param readyTimeoutMs how long to wait for `/health`; default 15000.
 * @param extraArgs more etcd flags, e.g. `--max-txn-ops=1024` (tests that write in bulk).
 * @throws Error when etcd is not installed or does not become healthy in time.
 */
export async function startLocalEtcd(
  options: {
    readyTimeoutMs?: number;
    extraArgs?: readonly string[];
    tls?: { readonly certFile: string; readonly keyFile: string; readonly caFile: string };
  } = {},
): Promise<LocalEtcd> {
  const readyTimeoutMs = options.readyTimeoutMs ?? 15_000;
  const dataDir = await mkdtemp(join(tmpdir(), "leasehold-etcd-"));
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const tls = options.tls;
  const endpoint = `${tls === undefined ? "http" : "https"}://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    process.env["LEASEHOLD_ETCD_BIN"] ?? "etcd",
    [
      "--name=leasehold",
      `--data-dir=${dataDir}`,
      `--listen-client-urls=${endpoint}`,
      `--advertise-client-urls=${endpoint}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=leasehold=${peer}`,
      "--logger=zap",
      "--log-level=error",
      ...(tls === undefined
        ? []
        : [
            `--cert-file=${tls.certFile}`,
            `--key-file=${tls.keyFile}`,
            `--trusted-ca-file=${tls.caFile}`,
            "--client-cert-auth",
          ]),
      ...(options.extraArgs ?? []),
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-2000);
  });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (!stopped) {
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
    }
    await rm(dataDir, { recursive: true, force: true });
  };
  const spawnError = new Promise<never>((_, reject) => {
    child.once("error", (error) =>
      reject(
        new Error(`cannot start etcd (${error.message}); install Debian's etcd-server or put etcd on PATH`),
      ),
    );
    child.once("exit", (code) => reject(new Error(`etcd exited with code ${code}: ${stderr.trim()}`)));
  });
  spawnError.catch(() => undefined); // observed below; avoids an unhandled rejection after success
  try {
    await Promise.race([waitHealthy(endpoint, readyTimeoutMs, tls), spawnError]);
  } catch (error) {
    await stop();
    throw error;
  }
  return { endpoint, process: child, stop };
}

async function waitHealthy(
  endpoint: string,
  timeoutMs: number,
  tls: { readonly certFile: string; readonly keyFile: string; readonly caFile: string } | undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if (tls === undefined) {
        const response = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        if (response.ok) return;
      } else if (await isHealthyOverTls(`${endpoint}/health`, tls)) {
        return;
      }
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`etcd at ${endpoint} did not become healthy within ${timeoutMs} ms`);
}

/** GET `url` with the client certificate etcd's `--client-cert-auth` wants (fetch cannot take one). */
async function isHealthyOverTls(
  url: string,
  tls: { readonly certFile: string; readonly keyFile: string; readonly caFile: string },
): Promise<boolean> {
  return await new Promise((resolve, reject) => {
    const request = httpsGet(
      url,
      {
        ca: readFileSync(tls.caFile),
        cert: readFileSync(tls.certFile),
        key: readFileSync(tls.keyFile),
        timeout: 1000,
      },
      (response) => {
        response.resume();
        resolve(response.statusCode === 200);
      },
    );
    request.on("timeout", () => request.destroy(new Error("timeout")));
    request.on("error", reject);
  });
}
