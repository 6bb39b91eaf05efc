/**
 * Renewals each held lease costs per TTL: a registrar renews every TTL/3
 * (client/registration/registrar.ts, as etcd3 does), so a lease of TTL `t` s costs 3/t renewals/s.
 */
export const RENEWALS_PER_TTL = 3;

/**
 * A Register refused at capacity carries this many times the overload pushback (10–20 s by
 * default): capacity frees only as leases leave, and a fleet of refused registrars retrying every
 * 1–2 s would cost the replica a Register's work each time for nothing.
 */
export const CAPACITY_PUSHBACK_FACTOR = 10;

/** An admitted lease's share of the projection, held until `release` (idempotent). */
export interface RenewalReservation {
  readonly release: () => void;
}

/** Why a new lease was refused: the projection it would have exceeded. */
export interface RenewalRefusal {
  /** Renewals/s this replica projects now (held leases and admitted Registers), rounded. */
  readonly projectedPerSecond: number;
  readonly message: string;
}

/**
 * The renewal load of this replica's leases, projected: Σ {@link RENEWALS_PER_TTL}/TTL over the
 * leases it holds (registered here, or renewed here since) plus the Registers it admitted that etcd
 * has not answered yet. A lease leaves the projection when deregistered here, when a renewal here
 * answers not found, or one TTL after it was last registered or renewed here (it expired, or its
 * holder renews on another replica). Leases leave in the order they were last seen: one seen
 * earlier with a longer TTL keeps a later, shorter-TTL one counted until it expires too (the
 * projection errs high). Pure: the clock is injected.
 *
 * A new lease is refused (before etcd is asked) when it would take the projection over
 * `maxRenewalsPerSecond`: the cap keeps the renewal rate within what this replica and etcd answer
 * in time, instead of finding out from late renewals once leases are already being lost (issue 10).
 */
export class RenewalLoad {
  readonly #maxPerSecond: number;
  readonly #nowMs: () => number;
  /** Lease id → its renewals/s and when it leaves the projection (Unix ms); in last-seen order. */
  readonly #leases = new Map<string, { perSecond: number; untilMs: number }>();
  #heldPerSecond = 0;
  #reservedPerSecond = 0;

  constructor(options: {
    /** Cap on the projection, renewals/s (positive). */
    maxRenewalsPerSecond: number;
    /** Clock in ms; default `Date.now`. */
    nowMs?: (() => number) | undefined;
  }) {
    this.#maxPerSecond = options.maxRenewalsPerSecond;
    this.#nowMs = options.nowMs ?? Date.now;
  }

  /** Leases held (registered or renewed here within their TTL). */
  get leases(): number {
    this.#expire();
    return this.#leases.size;
  }

  /** The projected renewals/s: held leases plus admitted Registers. */
  projectedPerSecond(): number {
    this.#expire();
    return this.#heldPerSecond + this.#reservedPerSecond;
  }

  /**
   * Admits one new lease of `ttlSeconds` (> 0) into the projection until the reservation's
   * `release` (call it once etcd answered, after {@link held} on success); or refuses it, as a
   * value, when the projection would go over the cap.
   */
  reserve(
    ttlSeconds: number,
  ): { ok: true; value: RenewalReservation } | { ok: false; error: RenewalRefusal } {
    const perSecond = RENEWALS_PER_TTL / ttlSeconds;
    const projected = this.projectedPerSecond();
    // A small tolerance, so N leases of exactly the cap are admitted despite float sums.
    if (projected + perSecond > this.#maxPerSecond * (1 + 1e-9)) {
      const shown = Math.round(projected);
      return {
        ok: false,
        error: {
          projectedPerSecond: shown,
          message: `registry at capacity (${shown} renewals/s projected, limit ${this.#maxPerSecond}); add a replica or raise --max-renewals-per-second`,
        },
      };
    }
    this.#reservedPerSecond += perSecond;
    let isReleased = false;
    const release = () => {
      if (isReleased) return;
      isReleased = true;
      this.#reservedPerSecond = Math.max(0, this.#reservedPerSecond - perSecond);
    };
    return { ok: true, value: { release } };
  }

  /** Records that lease `leaseId` of `ttlSeconds` (> 0) was registered or renewed here now. */
  held(leaseId: string, ttlSeconds: number): void {
    this.#forget(leaseId);
    const perSecond = RENEWALS_PER_TTL / ttlSeconds;
    this.#leases.set(leaseId, { perSecond, untilMs: this.#nowMs() + ttlSeconds * 1000 });
    this.#heldPerSecond += perSecond;
  }

  /** Drops lease `leaseId` (deregistered, or not found); no-op when not held. */
  dropped(leaseId: string): void {
    this.#forget(leaseId);
  }

  #forget(leaseId: string): void {
    const lease = this.#leases.get(leaseId);
    if (lease === undefined) return;
    this.#leases.delete(leaseId);
    this.#heldPerSecond = this.#leases.size === 0 ? 0 : this.#heldPerSecond - lease.perSecond;
  }

  #expire(): void {
    const nowMs = this.#nowMs();
    for (const [leaseId, lease] of this.#leases) {
      if (lease.untilMs > nowMs) return;
      this.#forget(leaseId);
    }
  }
}
