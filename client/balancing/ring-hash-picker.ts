import { xxh64 } from "@node-rs/xxhash";
import type { Pickable, Picker, PickerDeps } from "./picker.js";
import { DEFAULT_HASH_HEADER, type RingHashConfig } from "./policy-config.js";

/** xxHash64 with seed 0 (Envoy's and gRPC's ring hash function) of a request's hash key. */
export function hashKey(key: string): bigint {
  return xxh64(key, 0n);
}

const DEFAULT_RING: Required<RingHashConfig> = Object.freeze({
  minRingSize: 1024,
  maxRingSize: 4096,
  hashHeader: DEFAULT_HASH_HEADER,
});

/**
 * `ring_hash`: consistent hashing on a ring, after Envoy's `RingHashLoadBalancer` and grpc-js's
 * `ring_hash`. Each instance puts points `xxh64("<instanceId>_<i>")` on a 64-bit ring; a request
 * goes to the first point at or after its hash (wrapping), so a key keeps its instance, and an
 * instance that joins or leaves moves only the keys of its own arcs (about 1/N).
 *
 * Points per instance: `pointsPerWeight × weight / minWeight` (at least 1), where
 * `pointsPerWeight` is the smallest power of two that makes the ring ≥ `minRingSize`, halved while
 * it exceeds `maxRingSize`. Envoy recomputes its scale from the instance count on every change,
 * which re-cuts every instance's arcs (a fifth instance joining four moves ~33 % of keys, not
 * 20 %); a power of two changes only when the count crosses one (e.g. 8 → 9 equal instances),
 * so the ring stays a function of the membership alone (every caller builds the same ring) and
 * joins and leaves between those steps move only ~1/N. Hashing the instance id, not the address,
 * keeps keys where they were when an instance restarts on another port.
 *
 * The ring holds every listed SERVING instance (`deps.members`), so a key stays put while its
 * instance reconnects or its breaker is open: such a pick, and a retry (`exclude`), walks the ring
 * on to the next eligible instance, as Envoy does past unhealthy hosts. A pick without a hash (no
 * hash key on the request) takes a random one.
 * Build O(R log R) for a ring of R points; pick O(log R).
 */
export class RingHashPicker<T extends Pickable> implements Picker<T> {
  readonly policy = "ring_hash";
  readonly instances: readonly T[];
  readonly #random: () => number;
  /** Point hashes, ascending, and the index (into `instances`) of each point's instance. */
  readonly #hashes: BigUint64Array;
  readonly #owners: Uint32Array;
  /** The ring's instances (`deps.members`), and whether each is eligible now. */
  readonly #members: readonly T[];
  readonly #isEligible: Uint8Array;

  constructor(eligible: readonly T[], deps: PickerDeps<T>) {
    this.instances = eligible;
    this.#random = deps.random;
    const members = deps.members ?? eligible;
    this.#members = members;
    const eligibleIds = new Set(eligible.map((instance) => instance.instanceId));
    this.#isEligible = Uint8Array.from(members, (instance) => (eligibleIds.has(instance.instanceId) ? 1 : 0));
    const { minRingSize, maxRingSize } = deps.config?.ringHash ?? DEFAULT_RING;
    const minWeight = Math.min(...members.map((instance) => instance.weight));
    const units = members.map((instance) => instance.weight / minWeight);
    const totalUnits = units.reduce((sum, u) => sum + u, 0);
    let pointsPerWeight = 2 ** Math.ceil(Math.log2(minRingSize / totalUnits));
    const pointsOf = (u: number): number => Math.max(1, Math.round(pointsPerWeight * u));
    const ringSize = (): number => units.reduce((sum, u) => sum + pointsOf(u), 0);
    while (ringSize() > maxRingSize && pointsOf(1) > 1) pointsPerWeight /= 2;
    const points: { hash: bigint; owner: number }[] = [];
    units.forEach((u, owner) => {
      const id = (members[owner] as T).instanceId;
      for (let i = 0, n = pointsOf(u); i < n; i++) points.push({ hash: xxh64(`${id}_${i}`, 0n), owner });
    });
    points.sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : a.owner - b.owner));
    this.#hashes = BigUint64Array.from(points, (point) => point.hash);
    this.#owners = Uint32Array.from(points, (point) => point.owner);
  }

  /** Points on the ring. */
  get ringSize(): number {
    return this.#hashes.length;
  }

  pick(exclude?: ReadonlySet<string>, hash?: bigint): T | undefined {
    const hashes = this.#hashes;
    const n = hashes.length;
    if (n === 0) return undefined;
    const target = hash ?? BigInt(Math.floor(this.#random() * 2 ** 52)) << 12n;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((hashes[mid] as bigint) < target) lo = mid + 1;
      else hi = mid;
    }
    const hasExclude = exclude !== undefined && exclude.size > 0;
    for (let step = 0; step < n; step++) {
      const owner = this.#owners[(lo + step) % n] as number;
      if (this.#isEligible[owner] === 0) continue;
      const instance = this.#members[owner] as T;
      if (!hasExclude || !exclude.has(instance.instanceId)) return instance;
    }
    return undefined;
  }
}
