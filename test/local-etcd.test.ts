import test from "ava";
import { Etcd3 } from "etcd3";
import { startLocalEtcd } from "../cli/local-etcd.js";

test("startLocalEtcd runs a real etcd on free ports and stop() removes it", async (t) => {
  const etcd = await startLocalEtcd();
  const client = new Etcd3({ hosts: etcd.endpoint });
  t.teardown(() => client.close());
  await client.put("k").value("v");
  t.is(await client.get("k").string(), "v");
  await etcd.stop();
  t.not(etcd.process.signalCode, null);
});
