import { readFileSync } from "node:fs";
import { createSecureContext, type SecureContextOptions } from "node:tls";
import {
  credentials,
  ServerCredentials,
  type ChannelCredentials,
  type Interceptor,
  InterceptingCall,
} from "@grpc/grpc-js";

type SecureContextWatcher = Parameters<ServerCredentials["_addWatcher"]>[0];

/**
 * PEM files of one TLS endpoint, the same names on every hop (`--tls-cert`, `--tls-key`,
 * `--tls-ca`; env `LEASEHOLD_TLS_CERT`, `LEASEHOLD_TLS_KEY`, `LEASEHOLD_TLS_CA`).
 *
 * - On a server: `certFile` + `keyFile` turn TLS on; `caFile` also turns on mTLS (a client
 *   certificate signed by that CA is required).
 * - On a client: `caFile` verifies the server (default: the system roots); `certFile` + `keyFile`
 *   are the client certificate mTLS asks for. Any file given turns TLS on.
 */
export interface TlsFiles {
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  readonly caFile?: string | undefined;
}

/** A TLS file that is missing, unreadable, or given without its pair. */
export class TlsConfigError extends Error {
  override readonly name = "TlsConfigError";
}

/** `LEASEHOLD_TLS_CERT`, `LEASEHOLD_TLS_KEY`, `LEASEHOLD_TLS_CA` from `env` (empty = unset). */
export function tlsFilesFromEnv(env: NodeJS.ProcessEnv = process.env): TlsFiles {
  const value = (name: string) => (env[name] === "" ? undefined : env[name]);
  return {
    certFile: value("LEASEHOLD_TLS_CERT"),
    keyFile: value("LEASEHOLD_TLS_KEY"),
    caFile: value("LEASEHOLD_TLS_CA"),
  };
}

/** True when any TLS file is given. */
export function isTlsOn(files: TlsFiles | undefined): files is TlsFiles {
  return files !== undefined && (files.certFile ?? files.keyFile ?? files.caFile) !== undefined;
}

/** The PEM bytes of {@link TlsFiles}, read now. */
export interface TlsMaterial {
  readonly cert?: Buffer | undefined;
  readonly key?: Buffer | undefined;
  readonly ca?: Buffer | undefined;
}

/**
 * Reads the files (synchronously: done once at start and on each reload).
 * @throws TlsConfigError naming the file for a missing/unreadable file, or for a cert without a
 * key (or a key without a cert).
 */
export function readTlsMaterial(files: TlsFiles): TlsMaterial {
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) {
    throw new TlsConfigError("--tls-cert and --tls-key must be given together");
  }
  const read = (path: string | undefined, flag: string) => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (error) {
      throw new TlsConfigError(`${flag} ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
  };
  return {
    cert: read(files.certFile, "--tls-cert"),
    key: read(files.keyFile, "--tls-key"),
    ca: read(files.caFile, "--tls-ca"),
  };
}

/** Default pause between two reads of a server's TLS files, in milliseconds: 60000. */
export const TLS_RELOAD_INTERVAL_MS = 60_000;

/**
 * Node TLS server options of `files` (for an https server): cert and key, and with a CA a
 * required client certificate. Rejects a server without cert or key.
 * @throws TlsConfigError
 */
export function tlsServerOptions(files: TlsFiles): TlsMaterial & {
  requestCert: boolean;
  rejectUnauthorized: boolean;
} {
  const material = readTlsMaterial(files);
  if (material.cert === undefined) {
    throw new TlsConfigError("a TLS server needs --tls-cert and --tls-key (--tls-ca alone is for clients)");
  }
  return {
    cert: material.cert,
    key: material.key,
    ca: material.ca,
    requestCert: material.ca !== undefined,
    rejectUnauthorized: true,
  };
}

/**
 * Re-reads `files` every `intervalMs` and calls `changed` with the new server options when any
 * file's bytes changed (a renewed certificate is served without a restart). A read that fails
 * keeps the current certificate. The timer is unref'd: reloading never keeps a process alive.
 * @returns stop (idempotent).
 */
export function watchTlsFiles(
  files: TlsFiles,
  changed: (options: SecureContextOptions) => void,
  intervalMs: number = TLS_RELOAD_INTERVAL_MS,
): () => void {
  let last = fingerprint(readTlsMaterial(files));
  const timer = setInterval(() => {
    let options: ReturnType<typeof tlsServerOptions>;
    try {
      options = tlsServerOptions(files);
      createSecureContext({ cert: options.cert, key: options.key, ca: options.ca }); // a matching pair?
    } catch {
      return; // files half replaced (new cert, old key): keep serving the current ones, read again later
    }
    const next = fingerprint(options);
    if (next === last) return;
    last = next;
    changed({ cert: options.cert, key: options.key, ca: options.ca });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

function fingerprint(material: TlsMaterial): string {
  return [material.cert, material.key, material.ca].map((part) => part?.toString("base64") ?? "").join("|");
}

/**
 * grpc-js server credentials of `files`: insecure when no file is given; TLS with cert and key;
 * mTLS (client certificate required, verified against the CA) when a CA is given too. The files
 * are re-read every `reloadIntervalMs` while a server uses the credentials, and a changed
 * certificate applies to new connections (grpc-js `setSecureContext` through its watcher seam).
 * @throws TlsConfigError
 */
export function serverCredentials(
  files: TlsFiles | undefined,
  reloadIntervalMs: number = TLS_RELOAD_INTERVAL_MS,
): ServerCredentials {
  if (!isTlsOn(files)) return ServerCredentials.createInsecure();
  return new ReloadingServerCredentials(files, reloadIntervalMs);
}

class ReloadingServerCredentials extends ServerCredentials {
  readonly #files: TlsFiles;
  readonly #reloadIntervalMs: number;
  #stopWatching: (() => void) | undefined;

  constructor(files: TlsFiles, reloadIntervalMs: number) {
    const { requestCert, rejectUnauthorized, ...context } = tlsServerOptions(files);
    super({ requestCert, rejectUnauthorized }, context);
    this.#files = files;
    this.#reloadIntervalMs = reloadIntervalMs;
  }

  override _addWatcher(watcher: SecureContextWatcher): void {
    super._addWatcher(watcher);
    this.#stopWatching ??= watchTlsFiles(
      this.#files,
      (options) => this.updateSecureContextOptions(options),
      this.#reloadIntervalMs,
    );
  }

  override _removeWatcher(watcher: SecureContextWatcher): void {
    super._removeWatcher(watcher);
    if (this.getWatcherCount() === 0) {
      this.#stopWatching?.();
      this.#stopWatching = undefined;
    }
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

/**
 * grpc-js channel credentials of `files`: insecure when no file is given, else TLS verifying the
 * server against `caFile` (default: the system roots), presenting `certFile`/`keyFile` when given.
 * @throws TlsConfigError
 */
export function channelCredentials(files: TlsFiles | undefined): ChannelCredentials {
  if (!isTlsOn(files)) return credentials.createInsecure();
  const material = readTlsMaterial(files);
  return credentials.createSsl(material.ca ?? null, material.key ?? null, material.cert ?? null);
}

/**
 * Reads a bearer token file: its first non-empty line, trimmed.
 * @throws TlsConfigError naming the file when it is missing or empty.
 */
export function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new TlsConfigError(
      `--token-file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
    );
  }
  const token = text
    .split("\n")
    .map((line) => line.trim())
    .find((line) => line !== "");
  if (token === undefined) throw new TlsConfigError(`--token-file ${path} is empty`);
  return token;
}

/**
 * A client interceptor that sends `authorization: Bearer TOKEN` with every call. It works on
 * plaintext channels too (a loopback registry); anywhere else, use it with TLS, or the token
 * crosses the network in clear.
 */
export function bearerTokenInterceptor(token: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/** How a client reaches a Leasehold server: TLS files and a bearer token, each optional. */
export interface ClientSecurity {
  readonly tls?: TlsFiles | undefined;
  /** Bearer token sent as `authorization` metadata. */
  readonly token?: string | undefined;
}

/**
 * The client security of this process's environment: `LEASEHOLD_TLS_*` and the token in
 * `LEASEHOLD_TOKEN_FILE`.
 * @throws TlsConfigError when the token file cannot be read.
 */
export function clientSecurityFromEnv(env: NodeJS.ProcessEnv = process.env): ClientSecurity {
  const tokenFile = env["LEASEHOLD_TOKEN_FILE"];
  return {
    tls: tlsFilesFromEnv(env),
    token: tokenFile === undefined || tokenFile === "" ? undefined : readTokenFile(tokenFile),
  };
}
