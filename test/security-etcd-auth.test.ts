import test from "ava";
import { Etcd3, Range } from "etcd3";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { etcdAuthFromEnv } from "../cli/registry/run-registry.js";
import { startLocalEtcd } from "../cli/local-etcd.js";
import { connectRegistry } from "../client/registry-connection.js";
import { startRegistry } from "../registry/index.js";
import { KeepAliveSession } from "./helpers/keep-alive-session.js";
import { registration, rpc } from "./helpers/registry-fixture.js";

test("the registry works as an etcd user whose role only reads and writes the prefix; a wrong password fails the start", async (t) => {
  const etcd = await startLocalEtcd();
  t.teardown(async () => await etcd.stop());
  const admin = new Etcd3({ hosts: etcd.endpoint });
  const prefix = Range.prefix("/leasehold/");
  await admin.auth.userAdd({ name: "root", password: "root-pass", options: { no_password: false } });
  await admin.auth.userGrantRole({ user: "root", role: "root" });
  await admin.auth.roleAdd({ name: "leasehold" });
  await admin.auth.roleGrantPermission({
    name: "leasehold",
    perm: { permType: "Readwrite", key: prefix.start, range_end: prefix.end },
  });
  await admin.auth.userAdd({ name: "leasehold", password: "lh-pass", options: { no_password: false } });
  await admin.auth.userGrantRole({ user: "leasehold", role: "leasehold" });
  await admin.auth.authEnable();
  admin.close();

  await t.throwsAsync(
    startRegistry({
      listen: "127.0.0.1:0",
      etcdEndpoints: [etcd.endpoint],
      etcdAuth: { username: "leasehold", password: "wrong" },
    }),
  );

  const registry = await startRegistry({
    listen: "127.0.0.1:0",
    etcdEndpoints: [etcd.endpoint],
    etcdAuth: { username: "leasehold", password: "lh-pass" },
  });
  t.teardown(async () => await registry.close());
  const client = connectRegistry(registry.address);
  t.teardown(() => client.close());
  const registered = await rpc(client).register(registration({ service: "authz", instanceId: "a-1" }));
  const session = new KeepAliveSession(client);
  t.teardown(() => session.cancel());
  t.is(
    (await session.renew({ leaseId: registered.leaseId, registrationToken: registered.registrationToken }))
      .leaseId,
    registered.leaseId,
  );
  const listed = await rpc(client).getService({ service: "authz" });
  t.deepEqual(
    listed.instances.map((instance) => instance.instanceId),
    ["a-1"],
  );
  await rpc(client).deregister({
    service: "authz",
    instanceId: "a-1",
    leaseId: registered.leaseId,
    registrationToken: registered.registrationToken,
  });
});

test("etcd credentials come from env: user with password, or with a password file", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "leasehold-etcd-auth-"));
  t.teardown(async () => await rm(dir, { recursive: true, force: true }));
  const passwordFile = join(dir, "password");
  await writeFile(passwordFile, "from-file\n");
  t.is(etcdAuthFromEnv({}), undefined);
  t.deepEqual(etcdAuthFromEnv({ LEASEHOLD_ETCD_USER: "u", LEASEHOLD_ETCD_PASSWORD: "p" }), {
    username: "u",
    password: "p",
  });
  t.deepEqual(etcdAuthFromEnv({ LEASEHOLD_ETCD_USER: "u", LEASEHOLD_ETCD_PASSWORD_FILE: passwordFile }), {
    username: "u",
    password: "from-file",
  });
  t.throws(() => etcdAuthFromEnv({ LEASEHOLD_ETCD_USER: "u" }), { message: /LEASEHOLD_ETCD_PASSWORD/ });
  t.throws(
    () => etcdAuthFromEnv({ LEASEHOLD_ETCD_USER: "u", LEASEHOLD_ETCD_PASSWORD_FILE: join(dir, "none") }),
    {
      message: /ENOENT/,
    },
  );
});
