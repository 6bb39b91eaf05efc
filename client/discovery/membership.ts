import type { Instance } from "../../proto/gen/leasehold/registry/v1/registry.js";

/** The membership of one service at an etcd revision. Immutable; a new object on every change. */
export interface MembershipSnapshot {
  readonly service: string;
  /** Every listed instance (SERVING and DRAINING), sorted by `instanceId`. */
  readonly instances: readonly Instance[];
  /** etcd revision this membership was read at (decimal string; etcd revisions are int64). */
  readonly revision: string;
}

/** Something that knows a service's membership and says when it changes. */
export interface MembershipSource {
  /** The latest membership; empty until the first snapshot arrives. */
  current(): MembershipSnapshot;
  /** Calls `listener` after every change; returns the unsubscribe function. */
  subscribe(listener: (snapshot: MembershipSnapshot) => void): () => void;
  /**
   * False until the first real membership arrived (then `current()` may still be empty, truly);
   * absent means always true. Channels wait for it rather than fail on an empty first reading.
   */
  readonly hasSnapshot?: boolean;
}

/** A fixed membership, for tests and for callers that already know their instances. */
export function staticMembership(service: string, instances: readonly Instance[]): MembershipSource {
  const snapshot: MembershipSnapshot = {
    service,
    instances: [...instances].sort((a, b) => a.instanceId.localeCompare(b.instanceId)),
    revision: "0",
  };
  return { current: () => snapshot, subscribe: () => () => undefined };
}
