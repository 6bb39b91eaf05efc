import { hash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Metadata, ServerUnaryCall } from "@grpc/grpc-js";
import { RegistryError } from "../registry-error.js";

/** What one principal may do (one entry of the policy file's `principals`). */
export interface PrincipalGrant {
  /** Services it may register into (and update, renew, deregister its own instances of); `"*"` = any. */
  readonly services: readonly string[];
  /** Whether it may read (GetService, ListServices) and Watch when reads are not open. */
  readonly read: boolean;
}

/**
 * The policy file (`--auth-policy`), JSON:
 * `{"principals": {"NAME": {"services": ["calculator"], "read": true}}, "anonymous_read": true}`.
 * NAME is a bearer token's name (from `--auth-tokens`) or a SAN of an mTLS client certificate
 * (a DNS name, URI, e-mail or IP, without its type prefix). `anonymous_read` (default true) keeps
 * reads and Watch open to any caller; false restricts them to principals with `read: true`.
 */
export interface AuthPolicy {
  readonly principals: ReadonlyMap<string, PrincipalGrant>;
  readonly anonymousRead: boolean;
}

/** Parses a policy file's text. @throws RegistryError `invalid_argument` naming what is wrong. */
export function parseAuthPolicy(text: string, source = "auth policy"): AuthPolicy {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw invalid(`${source}: not JSON (${(error as Error).message})`);
  }
  if (!isObject(parsed) || !isObject(parsed["principals"])) {
    throw invalid(`${source}: expected {"principals": {"NAME": {"services": [...], "read": true}}}`);
  }
  const anonymousRead = parsed["anonymous_read"] ?? true;
  if (typeof anonymousRead !== "boolean") throw invalid(`${source}: anonymous_read must be true or false`);
  const principals = new Map<string, PrincipalGrant>();
  for (const [name, grant] of Object.entries(parsed["principals"])) {
    const services = isObject(grant) ? grant["services"] : undefined;
    const read = isObject(grant) ? (grant["read"] ?? false) : undefined;
    if (!Array.isArray(services) || !services.every((service) => typeof service === "string")) {
      throw invalid(`${source}: principals.${name}.services must be a list of service names`);
    }
    if (typeof read !== "boolean") throw invalid(`${source}: principals.${name}.read must be true or false`);
    principals.set(name, Object.freeze({ services: Object.freeze([...services] as string[]), read }));
  }
  return Object.freeze({ principals, anonymousRead });
}

/**
 * Parses a token file (`--auth-tokens`): one `NAME SHA256HEX` per line (the hex SHA-256 of the
 * token, never the token); blank lines and `#` comments are skipped.
 * @returns token hash → principal name.
 * @throws RegistryError `invalid_argument` naming the line.
 */
export function parseTokenFile(text: string, source = "auth tokens"): ReadonlyMap<string, string> {
  const byHash = new Map<string, string>();
  text.split("\n").forEach((raw, index) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const match = /^(\S+)\s+([0-9a-fA-F]{64})$/.exec(line);
    if (match === null) throw invalid(`${source} line ${index + 1}: expected "NAME SHA256HEX"`);
    byHash.set((match[2] as string).toLowerCase(), match[1] as string);
  });
  return byHash;
}

/** Hex SHA-256 of a bearer token: what a token file lists. */
export function hashToken(token: string): string {
  return hash("sha256", token, "hex");
}

/** What a call presents: its metadata and its TLS peer (any grpc-js server call). */
export interface CallIdentity {
  readonly metadata: Metadata;
  getAuthContext: ServerUnaryCall<unknown, unknown>["getAuthContext"];
}

/** Options of {@link RegistryAuth}. */
export interface RegistryAuthOptions {
  readonly policy: AuthPolicy;
  /** token hash → principal name; see {@link parseTokenFile}. */
  readonly tokens: ReadonlyMap<string, string>;
}

/**
 * The registry's authentication and authorisation (issue 7, item 3). A principal is the name of
 * a bearer token (`authorization: Bearer TOKEN`) listed in the token file, else the first SAN of
 * the verified mTLS client certificate that the policy names. Writes need a principal allowed
 * into the service; an instance's stored `owner` is compared by the store inside its fenced
 * transaction.
 */
export class RegistryAuth {
  readonly #options: RegistryAuthOptions;

  constructor(options: RegistryAuthOptions) {
    this.#options = options;
  }

  /** Reads the policy and token files (the token file is optional). @throws RegistryError `invalid_argument`. */
  static fromFiles(policyFile: string, tokensFile: string | undefined): RegistryAuth {
    const read = (path: string) => {
      try {
        return readFileSync(path, "utf8");
      } catch (error) {
        throw invalid(`cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
      }
    };
    return new RegistryAuth({
      policy: parseAuthPolicy(read(policyFile), policyFile),
      tokens: tokensFile === undefined ? new Map() : parseTokenFile(read(tokensFile), tokensFile),
    });
  }

  /**
   * The principal of a call, or undefined for an anonymous call.
   * @throws RegistryError `unauthenticated` for a bearer token that is malformed or not listed.
   */
  principalOf(call: CallIdentity): string | undefined {
    const header = call.metadata.get("authorization")[0];
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)$/i.exec(String(header));
      if (match === null) throw new RegistryError("unauthenticated", 'authorization must be "Bearer TOKEN"');
      const name = this.#tokenName(hashToken(match[1] as string));
      if (name === undefined) throw new RegistryError("unauthenticated", "unknown bearer token");
      return name;
    }
    const san = call.getAuthContext().sslPeerCertificate?.subjectaltname;
    if (san === undefined) return undefined;
    return sanValues(san).find((value) => this.#options.policy.principals.has(value));
  }

  /**
   * The principal allowed to write into `service` (Register, UpdateInstance, Deregister).
   * @throws RegistryError `unauthenticated` without a principal, `permission_denied` when the
   * policy does not let it into `service`.
   */
  authorizeWrite(call: CallIdentity, service: string): string {
    const principal = this.requirePrincipal(call);
    const services = this.#options.policy.principals.get(principal)?.services ?? [];
    if (!services.includes("*") && !services.includes(service)) {
      throw new RegistryError("permission_denied", `principal ${principal} may not register into ${service}`);
    }
    return principal;
  }

  /** The call's principal. @throws RegistryError `unauthenticated` for an anonymous call. */
  requirePrincipal(call: CallIdentity): string {
    const principal = this.principalOf(call);
    if (principal === undefined) {
      throw new RegistryError(
        "unauthenticated",
        "this registry requires a principal: a bearer token or an mTLS client certificate",
      );
    }
    return principal;
  }

  /**
   * Allows a read (GetService, ListServices, Watch): open when the policy's `anonymous_read`,
   * else only for principals with `read: true`.
   * @throws RegistryError `unauthenticated`/`permission_denied`.
   */
  authorizeRead(call: CallIdentity): void {
    if (this.#options.policy.anonymousRead) {
      this.principalOf(call); // a bad token is still refused
      return;
    }
    const principal = this.requirePrincipal(call);
    if (this.#options.policy.principals.get(principal)?.read !== true) {
      throw new RegistryError("permission_denied", `principal ${principal} may not read`);
    }
  }

  #tokenName(hash: string): string | undefined {
    const wanted = Buffer.from(hash, "hex");
    for (const [known, name] of this.#options.tokens) {
      if (timingSafeEqual(Buffer.from(known, "hex"), wanted)) return name;
    }
    return undefined;
  }
}

/** `DNS:a, URI:spiffe://x, IP Address:127.0.0.1` → `["a", "spiffe://x", "127.0.0.1"]`. */
export function sanValues(subjectAltName: string): string[] {
  return subjectAltName
    .split(",")
    .map((entry) => entry.trim().replace(/^[A-Za-z ]+:/, ""))
    .filter((value) => value !== "");
}

function invalid(message: string): RegistryError {
  return new RegistryError("invalid_argument", message);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
