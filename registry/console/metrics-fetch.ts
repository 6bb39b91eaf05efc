import { readFileSync } from "node:fs";
import { get } from "node:https";
import { checkServerIdentity } from "node:tls";
import type { TlsFiles } from "../../client/tls/tls-files.js";

/** Reads one instance's `/metrics` text: `address` is its `metrics_address`, `service` its service. */
export type MetricsFetch = (address: string, service: string, signal: AbortSignal) => Promise<string>;

/** Plain HTTP: `GET http://ADDRESS/metrics`. */
export const fetchMetricsOverHttp: MetricsFetch = async (address, _service, signal) => {
  const answer = await fetch(`http://${address}/metrics`, { signal });
  if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
  return await answer.text();
};

/**
 * HTTPS with the registry's own TLS files: the CA verifies the instance, whose certificate must
 * name its service (as `leasehold:///SERVICE` channels check it), and the registry's certificate
 * answers an instance that asks for client certificates (mTLS). Files are read per scrape, so a
 * renewed certificate is used at once.
 */
export function fetchMetricsOverHttps(files: TlsFiles): MetricsFetch {
  return async (address, service, signal) =>
    await new Promise<string>((resolve, reject) => {
      const read = (path: string | undefined) => (path === undefined ? undefined : readFileSync(path));
      const request = get(
        `https://${address}/metrics`,
        {
          ca: read(files.caFile),
          cert: read(files.certFile),
          key: read(files.keyFile),
          servername: service,
          checkServerIdentity: (_host, certificate) => checkServerIdentity(service, certificate),
          signal,
        },
        (response) => {
          let body = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => (body += chunk));
          response.on("error", reject);
          response.on("end", () =>
            response.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${response.statusCode}`)),
          );
        },
      );
      request.on("error", reject);
    });
}
