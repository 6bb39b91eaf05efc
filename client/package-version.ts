import { readFileSync } from "node:fs";

/**
 * The `version` of Leasehold's package.json: one level up from this file in the sources
 * (`client/`), two from `dist/client/`. `"unknown"` when neither is Leasehold's.
 */
export function packageVersion(): string {
  for (const relative of ["../package.json", "../../package.json"]) {
    try {
      const json = JSON.parse(readFileSync(new URL(relative, import.meta.url), "utf8")) as {
        name?: unknown;
        version?: unknown;
      };
      if (json.name === "leasehold" && typeof json.version === "string") return json.version;
    } catch {
      // not this one
    }
  }
  return "unknown";
}
