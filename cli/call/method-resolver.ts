/**
 * METHOD as grpcurl takes it: `Add`, `CalculatorService/Add`, `pkg.CalculatorService/Add` or
 * `pkg.CalculatorService.Add`, found among the services of a linked descriptor registry.
 */
import type { DescMethod, DescService, FileRegistry } from "@bufbuild/protobuf";
import { UsageError } from "../usage-error.js";

/** METHOD split into its parts; `service` is a full or short name, or absent. */
export interface MethodSpec {
  readonly service?: string;
  readonly method: string;
}

/** Splits METHOD; a leading `/` is allowed (`/pkg.Service/Add`, the gRPC path). */
export function parseMethodSpec(text: string): MethodSpec {
  const spec = text.startsWith("/") ? text.slice(1) : text;
  const slash = spec.lastIndexOf("/");
  const dot = spec.lastIndexOf(".");
  const [service, method] =
    slash >= 0
      ? [spec.slice(0, slash), spec.slice(slash + 1)]
      : dot >= 0
        ? [spec.slice(0, dot), spec.slice(dot + 1)]
        : [undefined, spec];
  const isName = (part: string): boolean => /^[A-Za-z_][A-Za-z0-9_]*$/.test(part);
  if (!isName(method) || (service !== undefined && !service.split(".").every(isName))) {
    throw new UsageError(`"${text}" is not a method: use Method, Service/Method or package.Service/Method`);
  }
  return service === undefined ? { method } : { service, method };
}

/** Whether `service` is what `name` (full or short) designates. */
export function isServiceNamed(service: string, name: string): boolean {
  return service === name || service.endsWith(`.${name}`);
}

/**
 * The one method `spec` designates among `serviceNames` (full names) of `registry`.
 * @throws UsageError when none matches (listing the methods there are) or several do (listing them).
 */
export function resolveMethod(
  registry: FileRegistry,
  serviceNames: readonly string[],
  spec: MethodSpec,
): DescMethod {
  const services = serviceNames
    .map((name) => registry.getService(name))
    .filter((service): service is DescService => service !== undefined);
  const inScope =
    spec.service === undefined
      ? services
      : services.filter((s) => isServiceNamed(s.typeName, spec.service ?? ""));
  const matches = inScope.flatMap((service) =>
    service.methods.filter((method) => method.name === spec.method),
  );
  const label = (method: DescMethod): string => `${method.parent.typeName}/${method.name}`;
  if (matches.length === 1) return matches[0] as DescMethod;
  if (matches.length > 1) {
    throw new UsageError(
      `method "${spec.method}" is ambiguous: ${matches.map(label).join(", ")}; name one with Service/Method`,
    );
  }
  const known = inScope.flatMap((service) => service.methods.map(label));
  const target = spec.service === undefined ? spec.method : `${spec.service}/${spec.method}`;
  if (inScope.length === 0 && spec.service !== undefined) {
    throw new UsageError(
      `no service "${spec.service}": there are ${listOrNone(services.map((s) => s.typeName))}`,
    );
  }
  throw new UsageError(`no method "${target}": there are ${listOrNone(known)}`);
}

function listOrNone(names: readonly string[]): string {
  return names.length === 0 ? "none" : names.join(", ");
}
