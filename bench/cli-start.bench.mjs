// CLI start: `node leasehold.mjs --help` against `node` importing @grpc/grpc-js (the floor any
// grpc-js CLI pays), and `node -e 0`. DESIGN §8: leasehold --help ≤ 1.5× node + grpc-js import.
// Runs the compiled CLI (dist/, `npm run build`), as the installed bin does.
import { interleave, ratioRow, summarizeVariants, timeNode } from "./harness.mjs";

export const description = "leasehold --help start time, as a ratio to node importing @grpc/grpc-js";

const BASELINE = "node + import @grpc/grpc-js";
const CANDIDATE = "leasehold --help";

/** @param {{ root: string, rounds: number, warmupRounds: number }} options */
export async function run({ root, rounds, warmupRounds }) {
  const variants = [
    { name: "node -e 0", args: ["-e", "0"] },
    { name: BASELINE, args: ["--input-type=module", "-e", 'await import("@grpc/grpc-js")'] },
    { name: CANDIDATE, args: ["leasehold.mjs", "--help"] },
  ];
  const samples = await interleave(
    variants.map((variant) => ({ name: variant.name, run: () => timeNode(variant.args, { cwd: root }) })),
    { rounds, warmupRounds },
  );
  const commands = Object.fromEntries(variants.map((v) => [v.name, ["node", ...v.args].join(" ")]));
  return {
    columns: [
      { key: "wallMs", label: "wall", unit: "ms" },
      { key: "cpuMs", label: "CPU", unit: "ms" },
    ],
    variants: summarizeVariants(samples, ["wallMs", "cpuMs"]).map((row) => ({
      ...row,
      command: commands[row.name],
    })),
    ratios: [
      ratioRow(samples, {
        metric: "wallMs",
        of: "wall",
        numerator: CANDIDATE,
        denominator: BASELINE,
        target: 1.5,
      }),
      ratioRow(samples, { metric: "cpuMs", of: "CPU", numerator: CANDIDATE, denominator: BASELINE }),
      ratioRow(samples, { metric: "wallMs", of: "wall", numerator: CANDIDATE, denominator: "node -e 0" }),
    ],
  };
}
