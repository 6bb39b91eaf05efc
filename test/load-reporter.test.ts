/**
 * The service side of ORCA over a real gRPC server: every answer carries the load report in the
 * `endpoint-load-metrics-bin` trailer, readable by grpc-js's own ORCA parser.
 */
import * as grpc from "@grpc/grpc-js";
import test, { type ExecutionContext } from "ava";
import { decodeLoadReport, LOAD_REPORT_TRAILER } from "../client/balancing/load-report.js";
import { LoadReporter } from "../client/server/load-reporter.js";
import { EchoServiceClient, EchoServiceService } from "../proto/gen/leasehold/demo/v1/echo.js";

async function serve(
  t: ExecutionContext,
  reporter: LoadReporter,
  handler: grpc.handleUnaryCall<unknown, unknown>,
): Promise<EchoServiceClient> {
  const server = new grpc.Server({ interceptors: [reporter.interceptor] });
  server.addService(EchoServiceService, { echo: handler });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  const client = new EchoServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  t.teardown(() => {
    client.close();
    server.forceShutdown();
    reporter.close();
  });
  return client;
}

/** One Echo call's trailers (its status metadata), whatever its outcome. */
function trailersOf(client: EchoServiceClient, message: string): Promise<grpc.Metadata> {
  return new Promise((resolve) => {
    const call = client.echo({ message }, () => undefined);
    call.on("status", (status: grpc.StatusObject) => resolve(status.metadata));
  });
}

test("every answer, OK or not, carries a load report: simulated CPU, application utilization, in-flight calls, then qps and eps per sample", async (t) => {
  const reporter = new LoadReporter({ simulateCpu: 0.42 });
  let inFlightSeen = -1;
  const client = await serve(t, reporter, (call, callback) => {
    inFlightSeen = reporter.inFlight;
    const { message } = call.request as { message: string };
    if (message === "fail") callback({ code: grpc.status.UNAVAILABLE, details: "told to" });
    else callback(null, { message, instanceId: "x", headers: {} });
  });
  const first = decodeLoadReport((await trailersOf(client, "a")).get(LOAD_REPORT_TRAILER)[0] as Buffer);
  t.is(inFlightSeen, 1);
  t.is(first?.cpuUtilization, 0.42);
  t.is(first?.rpsFractional, 0, "no sample yet");
  t.is(first?.namedMetrics.in_flight, 0, "this call counts as ended when its status goes out");
  await trailersOf(client, "fail");
  await trailersOf(client, "b");
  reporter.sample();
  reporter.setApplicationUtilization(0.7);
  reporter.setUtilization("memory", 0.3);
  const trailers = await trailersOf(client, "fail");
  const report = decodeLoadReport(trailers.get(LOAD_REPORT_TRAILER)[0] as Buffer);
  t.true((report?.rpsFractional ?? 0) > 0 && (report?.eps ?? 0) > 0);
  t.true(Math.abs((report?.eps ?? 0) * 3 - (report?.rpsFractional ?? 0)) < 1e-9, "1 of 3 answers failed");
  t.is(report?.applicationUtilization, 0.7);
  t.deepEqual(report?.utilization, { memory: 0.3 });

  // grpc-js's own reader (its weighted_round_robin uses it) parses the same trailer.
  const { createMetricsReader } = (await import("@grpc/grpc-js/build/src/orca.js")) as unknown as {
    createMetricsReader: (
      listener: (report: Record<string, unknown>) => void,
      previous: null,
    ) => (code: number, details: string, metadata: grpc.Metadata) => void;
  };
  let parsed: Record<string, unknown> | undefined;
  createMetricsReader((r) => (parsed = r), null)(0, "", trailers);
  t.is(parsed?.application_utilization, 0.7);
  t.is(parsed?.cpu_utilization, 0.42);
});

test("a simulated CPU range draws a new value in it every sample; bad values are refused", (t) => {
  const draws = [0, 0.5, 0.999];
  const reporter = new LoadReporter({ simulateCpu: [0.2, 0.9], random: () => draws.shift() ?? 0 });
  const seen = [reporter.report().cpuUtilization];
  reporter.sample();
  seen.push(reporter.report().cpuUtilization);
  reporter.sample();
  seen.push(reporter.report().cpuUtilization);
  t.deepEqual(
    seen.map((v) => Number(v?.toFixed(4))),
    [0.2, 0.55, 0.8993],
  );
  t.throws(() => new LoadReporter({ simulateCpu: 1.5 }), { instanceOf: RangeError });
  t.throws(() => new LoadReporter({ simulateCpu: [0.9, 0.2] }), { instanceOf: RangeError });
});

test("without simulation it reports the process's measured CPU use, a fraction of one core", (t) => {
  const reporter = new LoadReporter();
  const endMs = performance.now() + 50;
  while (performance.now() < endMs); // busy: close to one core
  reporter.sample();
  const cpu = reporter.report().cpuUtilization ?? 0;
  t.true(cpu > 0.05 && cpu < 2, `cpu ${cpu}`); // loose: a loaded machine deschedules the loop
});
