// CLI start: `node leasehold.mjs --help` against `node` importing @grpc/grpc-js (the floor any
// grpc-js CLI pays), and `node -e 0`. DESIGN §8: leasehold --help ≤ 1.5× node + grpc-js import.
// Runs the compiled CLI (dist/, `npm run build`), as the installed bin does.
import { interleave, roundRatios, summary, timeNode } from "./harness.mjs";

export const description = "leasehold --help start time, as a ratio to node importing @grpc/grpc-js";

const BASELINE = "node + import @grpc/grpc-js";
const CANDIDATE = "leasehold --help";

/** @param {{ root: string, rounds: number, warmupRounds: number }} options */
export function run({ root, rounds, warmupRounds }) {
  const variants = [
    { name: "node -e 0", args: ["-e", "0"] },
    { name: BASELINE, args: ["--input-type=module", "-e", 'await import("@grpc/grpc-js")'] },
    { name: CANDIDATE, args: ["leasehold.mjs", "--help"] },
  ];
  const samples = interleave(
    variants.map((variant) => ({ name: variant.name, run: () => timeNode(variant.args, { cwd: root }) })),
    { rounds, warmupRounds },
  );
  const series = (name, metric) => samples[name].map((sample) => sample[metric]);
  const ratio = (metric, numerator, denominator, target) => {
    const perRound = roundRatios(series(numerator, metric), series(denominator, metric));
    return { name: `${numerator} / ${denominator}`, metric, target, ...summary(perRound), perRound };
  };
  return {
    variants: variants.map((variant) => ({
      name: variant.name,
      command: ["node", ...variant.args].join(" "),
      wallMs: { ...summary(series(variant.name, "wallMs")), samples: series(variant.name, "wallMs") },
      cpuMs: { ...summary(series(variant.name, "cpuMs")), samples: series(variant.name, "cpuMs") },
    })),
    ratios: [
      ratio("wallMs", CANDIDATE, BASELINE, 1.5),
      ratio("cpuMs", CANDIDATE, BASELINE, null),
      ratio("wallMs", CANDIDATE, "node -e 0", null),
    ],
  };
}
