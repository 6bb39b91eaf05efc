import { status } from "@grpc/grpc-js";
import { existsSync } from "node:fs";
import test from "ava";
import { connectRegistry } from "../client/registry-connection.js";
import { spawnCli } from "./helpers/cli.js";
import { failure, rpc } from "./helpers/registry-fixture.js";

test.serial(
  "demo --tls serves calls over mTLS end to end, refuses plaintext, and stops cleanly on SIGINT",
  async (t) => {
    const demo = spawnCli(t, ["demo", "--tls", "--duration", "120"]);
    const etcdLine = await demo.waitForLine(/etcd https:\/\/127\.0\.0\.1:\d+/, 30_000);
    t.regex(etcdLine, /--cacert=\S+ca\.pem --cert=\S+ --key=\S+/, "etcdctl hint carries the TLS files");
    const registryLine = await demo.waitForLine(/registry 127\.0\.0\.1:\d+, admin https:/, 30_000);
    const registryAddress = /registry (127\.0\.0\.1:\d+)/.exec(registryLine)?.[1] ?? "";

    // A plaintext client gets nowhere: the registry is TLS only.
    const plaintext = connectRegistry(registryAddress);
    t.teardown(() => plaintext.close());
    t.is((await failure(rpc(plaintext).listServices({}))).code, status.UNAVAILABLE);

    // Calls flow: the periodic status line shows calculator traffic split over its instances.
    await demo.waitForLine(/traffic calculator: calc-1\(w1\) [1-9][\d.]* %/, 60_000);
    demo.child.kill("SIGINT");
    t.is(await demo.exited, 0, demo.stderr.slice(-2000));
    const out = demo.stdout.join("\n");
    const totals = /(\d+) calls made, (\d+) failed after retries/.exec(out);
    t.truthy(totals, "the summary is printed");
    t.true(Number(totals?.[1]) > 0, `calls made: ${totals?.[1]}`);
    t.is(totals?.[2], "0");
    t.regex(out, /stopped \d+ processes and etcd/);
    const tlsDir = /throwaway CA and certificates in (\S+);/.exec(out)?.[1];
    t.truthy(tlsDir);
    t.false(existsSync(tlsDir ?? ""), "the throwaway keys are removed");
  },
);
