import type { Command } from "commander";
import type { ClientSecurity, TlsFiles } from "../client/tls/tls-files.js";

/** The TLS and token flags every command shares (see {@link addSecurityOptions}). */
export interface SecurityFlags {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tokenFile?: string;
}

const env = (name: string): string | undefined => (process.env[name] === "" ? undefined : process.env[name]);

/**
 * Adds `--tls-cert`, `--tls-key`, `--tls-ca` (env `LEASEHOLD_TLS_CERT`/`_KEY`/`_CA`) and, for
 * commands that call the registry, `--token-file` (env `LEASEHOLD_TOKEN_FILE`). The same names on
 * every command: a server presents cert and key and, with a CA, requires client certificates; a
 * client verifies servers with the CA and presents cert and key when mTLS asks.
 */
export function addSecurityOptions(command: Command, options: { token: boolean }): Command {
  command
    .option(
      "--tls-cert <file>",
      "PEM certificate: served, and presented to mTLS peers (env LEASEHOLD_TLS_CERT)",
      env("LEASEHOLD_TLS_CERT"),
    )
    .option(
      "--tls-key <file>",
      "PEM private key of --tls-cert (env LEASEHOLD_TLS_KEY)",
      env("LEASEHOLD_TLS_KEY"),
    )
    .option(
      "--tls-ca <file>",
      "PEM CA: verifies servers; on a server, requires client certificates (mTLS) (env LEASEHOLD_TLS_CA)",
      env("LEASEHOLD_TLS_CA"),
    );
  if (options.token) {
    command.option(
      "--token-file <file>",
      "bearer token sent to the registry, first line of the file (env LEASEHOLD_TOKEN_FILE)",
      env("LEASEHOLD_TOKEN_FILE"),
    );
  }
  return command;
}

/** The TLS files of the flags. */
export function tlsFilesOf(flags: SecurityFlags): TlsFiles {
  return { certFile: flags.tlsCert, keyFile: flags.tlsKey, caFile: flags.tlsCa };
}

/**
 * The client security of the flags (the token file is read now).
 * @throws TlsConfigError naming an unreadable token file.
 */
export async function clientSecurityOf(flags: SecurityFlags): Promise<ClientSecurity> {
  const { readTokenFile } = await import("../client/tls/tls-files.js");
  return {
    tls: tlsFilesOf(flags),
    token: flags.tokenFile === undefined ? undefined : readTokenFile(flags.tokenFile),
  };
}
