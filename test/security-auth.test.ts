import { status } from "@grpc/grpc-js";
import anyTest, { type TestFn } from "ava";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectRegistry } from "../client/registry-connection.js";
import type { RegistryServiceClient } from "../proto/gen/leasehold/registry/v1/registry.js";
import { hashToken } from "../registry/auth/registry-auth.js";
import { startRegistry, type RunningRegistry } from "../registry/index.js";
import { KeepAliveSession } from "./helpers/keep-alive-session.js";
import {
  failure,
  registration,
  rpc,
  startRegistryFixture,
  type RegistryFixture,
} from "./helpers/registry-fixture.js";

interface Context {
  fixture: RegistryFixture;
  dir: string;
  alice: RegistryServiceClient;
  bob: RegistryServiceClient;
  anonymous: RegistryServiceClient;
  forged: RegistryServiceClient;
}

const test = anyTest as TestFn<Context>;

const TOKENS = { alice: "alice-secret-token-1", bob: "bob-secret-token-2" } as const;

test.before(async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "leasehold-auth-"));
  const policyFile = join(dir, "policy.json");
  const tokensFile = join(dir, "tokens");
  await writeFile(
    policyFile,
    JSON.stringify({
      principals: {
        alice: { services: ["alpha", "shared"], read: true },
        bob: { services: ["beta", "shared"], read: true },
      },
    }),
  );
  await writeFile(
    tokensFile,
    `# name sha256(token)\nalice ${hashToken(TOKENS.alice)}\nbob ${hashToken(TOKENS.bob)}\n`,
  );
  const fixture = await startRegistryFixture({ authPolicyFile: policyFile, authTokensFile: tokensFile });
  const address = fixture.registry.address;
  t.context = {
    fixture,
    dir,
    alice: connectRegistry(address, {}, { token: TOKENS.alice }),
    bob: connectRegistry(address, {}, { token: TOKENS.bob }),
    anonymous: connectRegistry(address),
    forged: connectRegistry(address, {}, { token: "not-a-listed-token" }),
  };
});

test.after.always(async (t) => {
  for (const client of [t.context.alice, t.context.bob, t.context.anonymous, t.context.forged]) {
    client?.close();
  }
  await t.context.fixture?.close();
  if (t.context.dir !== undefined) await rm(t.context.dir, { recursive: true, force: true });
});

/** etcd's revision and the ids of every lease: what a refused write must leave as it was. */
async function etcdState(fixture: RegistryFixture): Promise<{ revision: string; leases: string[] }> {
  const range = await fixture.etcd3.get("/leasehold/").exec();
  const leases = await fixture.etcd3.leaseClient.leaseLeases({});
  return { revision: range.header.revision, leases: leases.leases.map((lease) => lease.ID).sort() };
}

test.serial("an anonymous or unknown-token Register is UNAUTHENTICATED and etcd is untouched", async (t) => {
  const { fixture, anonymous, forged } = t.context;
  const before = await etcdState(fixture);
  const anon = await failure(rpc(anonymous).register(registration({ service: "alpha", instanceId: "anon" })));
  t.is(anon.code, status.UNAUTHENTICATED);
  const forgedError = await failure(
    rpc(forged).register(registration({ service: "alpha", instanceId: "forged" })),
  );
  t.is(forgedError.code, status.UNAUTHENTICATED);
  t.is(forgedError.details, "unknown bearer token");
  t.deepEqual(await etcdState(fixture), before);
});

test.serial(
  "a principal registering into a service outside its grant gets PERMISSION_DENIED and etcd is untouched",
  async (t) => {
    const { fixture, alice } = t.context;
    const before = await etcdState(fixture);
    const error = await failure(rpc(alice).register(registration({ service: "beta", instanceId: "a-in-b" })));
    t.is(error.code, status.PERMISSION_DENIED);
    t.regex(error.details, /alice may not register into beta/);
    t.deepEqual(await etcdState(fixture), before);
  },
);

test.serial(
  "another principal cannot update, deregister or renew an instance: PERMISSION_DENIED, etcd untouched",
  async (t) => {
    const { fixture, alice, bob } = t.context;
    const registered = await rpc(bob).register(registration({ service: "shared", instanceId: "bob-1" }));
    const stored = JSON.parse(
      (await fixture.etcd3.get("/leasehold/v1/services/shared/bob-1").string()) ?? "{}",
    ) as { owner?: string };
    t.is(stored.owner, "bob", "the owner is stored in the instance value");
    const before = await etcdState(fixture);
    // Even with bob's lease id and registration token, alice is not bob.
    const key = {
      service: "shared",
      instanceId: "bob-1",
      leaseId: registered.leaseId,
      registrationToken: registered.registrationToken,
    };

    const update = await failure(rpc(alice).updateInstance({ ...key, weight: 10_000, metadata: undefined }));
    t.is(update.code, status.PERMISSION_DENIED);
    const deregister = await failure(rpc(alice).deregister(key));
    t.is(deregister.code, status.PERMISSION_DENIED);
    const session = new KeepAliveSession(alice);
    t.teardown(() => session.cancel());
    const renew = await failure(
      session.renew({ leaseId: registered.leaseId, registrationToken: registered.registrationToken }),
    );
    t.is(renew.code, status.PERMISSION_DENIED);
    t.deepEqual(await etcdState(fixture), before, "same revision, same leases");

    // The owner still can.
    const own = new KeepAliveSession(bob);
    t.teardown(() => own.cancel());
    t.is(
      (await own.renew({ leaseId: registered.leaseId, registrationToken: registered.registrationToken }))
        .leaseId,
      registered.leaseId,
    );
    const updated = await rpc(bob).updateInstance({ ...key, weight: 5, metadata: undefined });
    t.is(updated.instance?.weight, 5);
    const afterUpdate = JSON.parse(
      (await fixture.etcd3.get("/leasehold/v1/services/shared/bob-1").string()) ?? "{}",
    ) as { owner?: string };
    t.is(afterUpdate.owner, "bob", "an update keeps the owner");
    await rpc(bob).deregister(key);
    t.is(await fixture.etcd3.get("/leasehold/v1/services/shared/bob-1").string(), null);
  },
);

test.serial(
  "a KeepAlive of a lease that holds no Leasehold instance is NOT_FOUND with auth on",
  async (t) => {
    const { fixture, alice } = t.context;
    // A well-formed token of alice's own instance, with a lease that is not Leasehold's.
    const own = await rpc(alice).register(registration({ service: "alpha", instanceId: "alice-token" }));
    const foreign = fixture.etcd3.lease(30, { autoKeepAlive: false });
    const leaseId = await foreign.grant();
    t.teardown(async () => await foreign.revoke().catch(() => undefined));
    const session = new KeepAliveSession(alice);
    t.teardown(() => session.cancel());
    const error = await failure(session.renew({ leaseId, registrationToken: own.registrationToken }));
    t.is(error.code, status.NOT_FOUND);
  },
);

test.serial("anonymous writes are refused but reads stay open by default", async (t) => {
  const { anonymous, alice } = t.context;
  await rpc(alice).register(registration({ service: "alpha", instanceId: "alice-read" }));
  const listed = await rpc(anonymous).getService({ service: "alpha" });
  t.true(listed.instances.some((instance) => instance.instanceId === "alice-read"));
});

test.serial("with anonymous_read false, reads need a principal with read: true", async (t) => {
  const { fixture, dir } = t.context;
  const policyFile = join(dir, "closed.json");
  const tokensFile = join(dir, "closed-tokens");
  await writeFile(
    policyFile,
    JSON.stringify({
      anonymous_read: false,
      principals: { reader: { services: [], read: true }, writer: { services: ["alpha"] } },
    }),
  );
  await writeFile(tokensFile, `reader ${hashToken("reader-token")}\nwriter ${hashToken("writer-token")}\n`);
  const registry: RunningRegistry = await startRegistry({
    listen: "127.0.0.1:0",
    etcdEndpoints: [fixture.etcd.endpoint],
    authPolicyFile: policyFile,
    authTokensFile: tokensFile,
  });
  t.teardown(async () => await registry.close());
  const clients = {
    anonymous: connectRegistry(registry.address),
    reader: connectRegistry(registry.address, {}, { token: "reader-token" }),
    writer: connectRegistry(registry.address, {}, { token: "writer-token" }),
  };
  t.teardown(() => Object.values(clients).forEach((client) => client.close()));
  t.is((await failure(rpc(clients.anonymous).listServices({}))).code, status.UNAUTHENTICATED);
  t.is((await failure(rpc(clients.writer).getService({ service: "alpha" }))).code, status.PERMISSION_DENIED);
  t.true(Array.isArray((await rpc(clients.reader).listServices({})).services));
});
