import type { ServiceDefinition, UntypedServiceImplementation } from "@grpc/grpc-js";

/** A demo service: its registry name, its ts-proto grpc-js definition and its handlers. */
export interface DemoService {
  /** Registry name (a DNS-1123 label). */
  readonly name: string;
  readonly definition: ServiceDefinition;
  /** Proto method name (e.g. `Add`) → the definition's key (`add`) and the request's JSON reader. */
  readonly methods: Readonly<Record<string, { readonly key: string; readonly request: JsonReader }>>;
  /** Handlers for an instance; each answer carries `instanceId`. */
  implement(instanceId: string): UntypedServiceImplementation;
}

/** The `fromJSON` half of a ts-proto message (proto3 JSON mapping; missing fields take defaults). */
export interface JsonReader {
  fromJSON(object: unknown): unknown;
}
