import { generate } from "selfsigned";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { TlsFiles } from "../../client/tls/tls-files.js";

/** A certificate authority generated for one run: PEM certificate and key. */
export interface ThrowawayCa {
  readonly cert: string;
  readonly key: string;
}

/** Validity of throwaway certificates: from an hour ago (clock skew) for two days. */
const validity = () => ({
  notBeforeDate: new Date(Date.now() - 3_600_000),
  notAfterDate: new Date(Date.now() + 2 * 86_400_000),
});

/**
 * Generates a throwaway CA (P-256, SHA-256) with `selfsigned`. For the demo and tests only: its
 * key lives in memory and in the run's temp dir.
 */
export async function generateCa(commonName = "leasehold throwaway CA"): Promise<ThrowawayCa> {
  const pems = await generate([{ name: "commonName", value: commonName }], {
    keyType: "ec",
    algorithm: "sha256",
    ...validity(),
    extensions: [
      { name: "basicConstraints", cA: true, critical: true },
      { name: "keyUsage", keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}

/**
 * Issues a leaf certificate signed by `ca`, usable both as a server and as an mTLS client
 * certificate, with the given DNS and IP SANs (the first DNS name is also the common name).
 */
export async function issueCertificate(
  ca: ThrowawayCa,
  names: { readonly dns: readonly string[]; readonly ips?: readonly string[] },
): Promise<{ cert: string; key: string }> {
  const pems = await generate([{ name: "commonName", value: names.dns[0] ?? "leasehold" }], {
    keyType: "ec",
    algorithm: "sha256",
    ...validity(),
    ca: { cert: ca.cert, key: ca.key },
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: true, clientAuth: true },
      {
        name: "subjectAltName",
        altNames: [
          ...names.dns.map((value) => ({ type: 2 as const, value })),
          ...(names.ips ?? []).map((ip) => ({ type: 7 as const, ip })),
        ],
      },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}

/**
 * Writes `ca.pem` plus `NAME.pem`/`NAME-key.pem` of a certificate issued by `ca` into `dir`.
 * @returns the {@link TlsFiles} of that certificate (with the CA).
 */
export async function writeCertificate(
  dir: string,
  name: string,
  ca: ThrowawayCa,
  names: { readonly dns: readonly string[]; readonly ips?: readonly string[] },
): Promise<Required<TlsFiles>> {
  const issued = await issueCertificate(ca, names);
  const files = {
    caFile: join(dir, "ca.pem"),
    certFile: join(dir, `${name}.pem`),
    keyFile: join(dir, `${name}-key.pem`),
  };
  await writeFile(files.caFile, ca.cert);
  await writeFile(files.certFile, issued.cert);
  await writeFile(files.keyFile, issued.key, { mode: 0o600 });
  return files;
}
