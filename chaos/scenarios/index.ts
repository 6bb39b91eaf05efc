/** Every chaos scenario, in the order `npm run chaos` runs them. */
import type { Scenario } from "../lib/result.js";
import { etcdSigkill, etcdSigstop } from "./etcd-faults.js";
import { failingThree, sigkillOne, sigkillThree, sigstopInstance } from "./instance-faults.js";
import { compactionAway, registryDown, twoRegistries } from "./registry-faults.js";
import { soak } from "./soak.js";
import { watchBurst } from "./watch-burst.js";

export const SCENARIOS: readonly Scenario[] = [
  sigkillOne,
  sigkillThree,
  failingThree,
  sigstopInstance,
  etcdSigstop,
  etcdSigkill,
  registryDown,
  twoRegistries,
  compactionAway,
  watchBurst,
  soak,
];
