import type { ChannelCredentials, ServiceDefinition, UntypedServiceImplementation } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { Registrar, RegistrarState } from "../client/registration/registrar.js";
import type { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";

/** A demo service: its registry name, its ts-proto grpc-js definition and its handlers. */
export interface DemoService {
  /** Registry name (a DNS-1123 label). */
  readonly name: string;
  readonly definition: ServiceDefinition;
  /** Proto method name (e.g. `Add`) → the definition's key (`add`) and the request's JSON reader. */
  readonly methods: Readonly<Record<string, { readonly key: string; readonly request: JsonReader }>>;
  /** Handlers for an instance; each answer carries `instanceId`. */
  implement(instanceId: string): UntypedServiceImplementation;
  /**
   * A stateful service (kv): builds the instance's state before the server binds; `peerCredentials`
   * dial the other instances (the instance's own TLS files, else insecure). The host serves
   * its handlers instead of {@link implement}, lets it start the registrar ({@link StatefulInstance.start}),
   * and closes it first on shutdown.
   */
  readonly stateful?:
    | ((
        instanceId: string,
        logger: Logger | undefined,
        peerCredentials: ChannelCredentials,
      ) => StatefulInstance)
    | undefined;
}

/** One instance of a stateful demo service. */
export interface StatefulInstance {
  readonly implementation: UntypedServiceImplementation;
  /** Starts `registrar` itself (e.g. registered DRAINING until caught up). */
  start(host: { readonly registry: RegistryServiceClient; readonly registrar: Registrar }): Promise<void>;
  /** Told every change of the registrar's state (`RegistrarOptions.onStateChanged`); must not throw. */
  registrarStateChanged?(state: RegistrarState, previous: RegistrarState): void;
  /** Idempotent. */
  close(): Promise<void>;
}

/** The `fromJSON` half of a ts-proto message (proto3 JSON mapping; missing fields take defaults). */
export interface JsonReader {
  fromJSON(object: unknown): unknown;
}
