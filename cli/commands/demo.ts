import type { Command } from "commander";
import type { DemoFlags } from "../demo/run-demo.js";
import { hostPort, numberIn, urlList } from "../options.js";

/** `leasehold demo`; the implementation is loaded when the command runs. */
export function demoCommand(program: Command): void {
  program
    .command("demo")
    .description(
      "run the whole system on this machine: etcd, a registry, weighted calculator and echo instances, and a live " +
        "client, with instances joining, failing and leaving on a schedule",
    )
    .option("--duration <seconds>", "how long to run", numberIn(10, 86_400), 60)
    .option("--etcd <url[,url]>", "use this etcd instead of starting one (env LEASEHOLD_ETCD)", urlList)
    .option(
      "--metrics-listen <host:port>",
      "serve the demo client's /metrics here, listed in the registry's /sd/prometheus for Prometheus (its instances bind /metrics on the same host)",
      hostPort,
    )
    .option(
      "--tls",
      "mTLS on every hop (etcd, registry, instances, calls) with a throwaway CA, and token-authenticated writes",
      false,
    )
    .action(async (flags: DemoFlags) => {
      const { runDemo } = await import("../demo/run-demo.js");
      await runDemo(flags);
    });
}
