/**
 * A plain grpc-js server of `test/fixtures/ledger.proto` (and `audit.proto`): a service that is not
 * a Leasehold demo service, loaded with `@grpc/proto-loader` as any Node codebase would, served
 * with `@grpc/reflection`, and leased in with the library's Registrar.
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { Registrar } from "../../client/registration/registrar.js";
import type { RegistryServiceClient } from "../../proto/gen/leasehold/registry/v1/registry.js";

export const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));

interface Entry {
  accountId: string;
  amountCents: string;
}

/** How the server answers reflection: both versions (as `@grpc/reflection` does), only v1alpha, or none. */
export type ReflectionMode = "v1" | "v1alpha-only" | "none";

export interface LedgerServerOptions {
  readonly instanceId: string;
  /** Also serve `fixture.audit.v1.AuditService` (whose `Post` makes `Post` ambiguous). */
  readonly withAudit?: boolean;
  readonly reflection?: ReflectionMode;
}

/** A running ledger server; `served` counts the calls it handled, per method. */
export interface LedgerServer {
  readonly instanceId: string;
  readonly address: string;
  readonly served: Record<string, number>;
  /** Metadata values of `x-tenant` seen by Post, in order. */
  readonly tenants: string[];
  close(): Promise<void>;
}

let packageDefinition: PackageDefinition | undefined;

function ledgerPackage(): PackageDefinition {
  return (packageDefinition ??= loadSync(["ledger.proto", "audit.proto"], {
    includeDirs: [FIXTURES],
    longs: String,
    enums: String,
    defaults: true,
  }));
}

/** Starts a ledger server on 127.0.0.1:0. */
export async function startLedgerServer(options: LedgerServerOptions): Promise<LedgerServer> {
  const definitions = grpc.loadPackageDefinition(ledgerPackage()) as unknown as {
    fixture: {
      ledger: { v1: { LedgerService: grpc.ServiceClientConstructor } };
      audit: { v1: { AuditService: grpc.ServiceClientConstructor } };
    };
  };
  const { instanceId } = options;
  const served: Record<string, number> = {};
  const tenants: string[] = [];
  const count = (method: string): void => {
    served[method] = (served[method] ?? 0) + 1;
  };
  const balances = new Map<string, bigint>();
  const server = new grpc.Server();
  server.addService(definitions.fixture.ledger.v1.LedgerService.service, {
    Post: (
      call: grpc.ServerUnaryCall<{ accountId: string; amountCents: string; kind: string }, unknown>,
      callback: grpc.sendUnaryData<unknown>,
    ) => {
      count("Post");
      const tenant = call.metadata.get("x-tenant").map(String);
      tenants.push(...tenant);
      const { accountId, amountCents, kind } = call.request;
      const delta = BigInt(amountCents) * (kind === "KIND_DEBIT" ? -1n : 1n);
      const balance = (balances.get(accountId) ?? 0n) + delta;
      balances.set(accountId, balance);
      callback(null, {
        accountId,
        balanceCents: String(balance),
        instanceId,
        seenMetadata: tenant.length > 0 ? { "x-tenant": tenant.join(",") } : {},
      });
    },
    History: (call: grpc.ServerWritableStream<{ accountId: string; limit: number }, Entry>) => {
      count("History");
      for (let index = 1; index <= call.request.limit; index++) {
        call.write({ accountId: call.request.accountId, amountCents: String(index * 100) });
      }
      call.end();
    },
    Total: (call: grpc.ServerReadableStream<Entry, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      count("Total");
      let total = 0n;
      let entries = 0;
      let isRejected = false;
      call.on("data", (entry: Entry) => {
        // Answers at once, while the caller may still be sending.
        if (entry.accountId === "frozen" && !isRejected) {
          isRejected = true;
          callback({ code: grpc.status.FAILED_PRECONDITION, details: "account frozen is frozen" });
        }
        total += BigInt(entry.amountCents);
        entries += 1;
      });
      call.on("end", () => {
        if (!isRejected) callback(null, { totalCents: String(total), entries });
      });
      call.on("error", () => undefined);
    },
    Running: (call: grpc.ServerDuplexStream<Entry, unknown>) => {
      count("Running");
      let balance = 0n;
      call.on("data", (entry: Entry) => {
        balance += BigInt(entry.amountCents);
        call.write({ accountId: entry.accountId, balanceCents: String(balance), instanceId });
      });
      call.on("end", () => call.end());
      call.on("error", () => undefined);
    },
  });
  const services = ["fixture.ledger.v1.LedgerService"];
  if (options.withAudit === true) {
    services.push("fixture.audit.v1.AuditService");
    server.addService(definitions.fixture.audit.v1.AuditService.service, {
      Post: (
        call: grpc.ServerUnaryCall<{ accountId: string; kind: string }, unknown>,
        callback: grpc.sendUnaryData<unknown>,
      ) => {
        count("AuditPost");
        callback(null, { accountId: call.request.accountId, kind: call.request.kind, instanceId });
      },
    });
  }
  const reflection = options.reflection ?? "v1";
  if (reflection !== "none") {
    const service = new ReflectionService(ledgerPackage(), { services });
    if (reflection === "v1") service.addToServer(server);
    else {
      // Only the v1alpha half, as older servers (and grpc-go before 1.45) serve.
      service.addToServer({
        addService: (definition, implementation) => {
          if (Object.values(definition).some((method) => method.path.includes(".v1alpha.")))
            server.addService(definition, implementation);
        },
      });
    }
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  return {
    instanceId,
    address: `127.0.0.1:${port}`,
    served,
    tenants,
    close: async () => {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    },
  };
}

/** Leases `server` in as an instance of `service`; stop() deregisters it (the server keeps serving). */
export async function register(
  registry: RegistryServiceClient,
  service: string,
  server: LedgerServer,
  weight = 1,
): Promise<Registrar> {
  const registrar = new Registrar({
    registry,
    instance: { service, instanceId: server.instanceId, address: server.address, weight },
    ttlSeconds: 5,
  });
  await registrar.start();
  return registrar;
}
