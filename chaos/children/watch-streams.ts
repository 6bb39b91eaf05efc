/**
 * Many raw Watch streams of one service in a process of their own (so decoding them does not
 * load the scenario's process): `count` streams that read normally, plus `paused` streams that
 * stop reading after their snapshot. Every 500 ms prints
 * `state {"open","ended":[codes],"pausedOpen","pausedEnded":[codes],"minUpserts","minRemoves"}`.
 * SIGUSR2 resumes the paused streams (so their end, if any, is read).
 */
import type { ClientReadableStream, ServiceError } from "@grpc/grpc-js";
import { connectRegistry } from "../../client/registry-connection.js";
import type { WatchResponse } from "../../proto/gen/leasehold/registry/v1/registry.js";
import { exitWithParent } from "../lib/child.js";

exitWithParent();

interface WatchStreamsOptions {
  readonly registry: string;
  readonly service: string;
  readonly count: number;
  readonly paused: number;
}

interface Tally {
  readonly stream: ClientReadableStream<WatchResponse>;
  upserts: number;
  removes: number;
  ended: string | undefined;
}

const options = JSON.parse(process.argv[2] ?? "{}") as WatchStreamsOptions;
// A few channels, as many callers would have: grpc-js multiplexes the streams of one channel.
const channels = Array.from({ length: 8 }, (_, i) =>
  connectRegistry(options.registry, { "grpc.chaos_channel": i }),
);

function open(index: number, isPaused: boolean): Tally {
  const client = channels[index % channels.length];
  if (client === undefined) throw new Error("no channel");
  const stream = client.watch({ service: options.service, startRevision: "0" });
  const tally: Tally = { stream, upserts: 0, removes: 0, ended: undefined };
  stream.on("data", (message: WatchResponse) => {
    if (message.event?.$case === "delta") {
      tally.upserts += message.event.value.upserted.length;
      tally.removes += message.event.value.removed.length;
    }
    if (isPaused && message.event?.$case === "snapshot") stream.pause();
  });
  stream.on("error", (error: ServiceError) => (tally.ended ??= `code ${error.code}: ${error.details}`));
  stream.on("end", () => (tally.ended ??= "OK"));
  return tally;
}

const reading = Array.from({ length: options.count }, (_, i) => open(i, false));
const paused = Array.from({ length: options.paused }, (_, i) => open(options.count + i, true));

const report = (): void => {
  const state = {
    open: reading.filter((t) => t.ended === undefined).length,
    ended: reading.flatMap((t) => (t.ended === undefined ? [] : [t.ended])).slice(0, 5),
    endedCount: reading.filter((t) => t.ended !== undefined).length,
    pausedOpen: paused.filter((t) => t.ended === undefined).length,
    pausedEnded: paused.flatMap((t) => (t.ended === undefined ? [] : [t.ended])),
    minUpserts: Math.min(...reading.map((t) => t.upserts)),
    minRemoves: Math.min(...reading.map((t) => t.removes)),
  };
  process.stdout.write(`state ${JSON.stringify(state)}\n`);
};
setInterval(report, 500);
report();
process.on("SIGUSR2", () => {
  for (const tally of paused) tally.stream.resume();
});
process.once("SIGTERM", () => {
  for (const tally of [...reading, ...paused]) tally.stream.cancel();
  for (const channel of channels) channel.close();
  process.exit(0);
});
