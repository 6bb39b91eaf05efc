import type { Etcd3, IKeyValue, ITxnResponse } from "etcd3";
import type { RequestScope } from "./etcd-store.js";

/** What creating one key came to: written at `revision`, or held already (`held`: the key as read). */
export type KeyCreate = { readonly revision: string } | { readonly held: IKeyValue | undefined };

interface PendingCreate {
  readonly key: string;
  readonly value: string;
  readonly leaseId: string;
  readonly scope: RequestScope;
  resolve(result: KeyCreate): void;
  reject(error: unknown): void;
}

/**
 * Keys one batched transaction creates at most: etcd's default `--max-txn-ops` is 128 and each key
 * costs one put (its compare does not count).
 */
export const MAX_CREATES_PER_TXN = 64;

/**
 * Creates instance keys ("put with this lease if the key is absent") for concurrent Registers in
 * one etcd transaction per event-loop turn: `Create == 0` for every key, then every put. One
 * raft entry and one round trip for up to {@link MAX_CREATES_PER_TXN} Registers, instead of one
 * each (issue 10: Register was ~0.9 ms of registry CPU with two etcd calls of its own).
 *
 * If any key of a batch exists the whole transaction writes nothing, and each key of it is then
 * created on its own (`Create == 0`, else read the key), so every caller gets its own answer.
 * A lone create skips the batch form. A key asked twice in one turn goes in separate transactions
 * (etcd refuses a key twice in one). The batch carries the request timeout; each caller's own
 * deadline is checked by the caller before and after (a late caller's lease is revoked).
 */
export class KeyCreates {
  readonly #time: (request: () => Promise<ITxnResponse>) => Promise<ITxnResponse>;
  readonly #client: Etcd3;
  readonly #callOptions: (scope: RequestScope) => { deadline: number };
  #queued: PendingCreate[] = [];
  #isFlushScheduled = false;

  /**
   * @param time wraps each etcd transaction (metrics).
   * @param callOptions the deadline of a request for `scope` (`{}` for a batch: the request timeout).
   */
  constructor(
    time: (request: () => Promise<ITxnResponse>) => Promise<ITxnResponse>,
    client: Etcd3,
    callOptions: (scope: RequestScope) => { deadline: number },
  ) {
    this.#time = time;
    this.#client = client;
    this.#callOptions = callOptions;
  }

  /**
   * Puts `value` under `key` with lease `leaseId` if the key does not exist.
   * @throws whatever etcd3 throws (the caller normalises it).
   */
  create(key: string, value: string, leaseId: string, scope: RequestScope): Promise<KeyCreate> {
    return new Promise((resolve, reject) => {
      this.#queued.push({ key, value, leaseId, scope, resolve, reject });
      if (this.#isFlushScheduled) return;
      this.#isFlushScheduled = true;
      setImmediate(() => {
        this.#isFlushScheduled = false;
        this.#flush();
      });
    });
  }

  #flush(): void {
    const queued = this.#queued;
    this.#queued = [];
    while (queued.length > 0) {
      const batch: PendingCreate[] = [];
      const keys = new Set<string>();
      for (let at = 0; at < queued.length && batch.length < MAX_CREATES_PER_TXN;) {
        const pending = queued[at]!;
        if (keys.has(pending.key)) {
          at += 1;
          continue;
        }
        keys.add(pending.key);
        batch.push(pending);
        queued.splice(at, 1);
      }
      void this.#commit(batch);
    }
  }

  async #commit(batch: readonly PendingCreate[]): Promise<void> {
    if (batch.length > 1) {
      try {
        const [first, ...rest] = batch;
        let txn = this.#client.if(first!.key, "Create", "==", 0);
        for (const pending of rest) txn = txn.and(pending.key, "Create", "==", 0);
        const puts = batch.map((pending) =>
          this.#client.put(pending.key).value(pending.value).lease(pending.leaseId),
        );
        const committed = await this.#time(() =>
          txn
            .then(...puts)
            .options(this.#callOptions({}))
            .commit(),
        );
        if (committed.succeeded) {
          for (const pending of batch) pending.resolve({ revision: committed.header.revision });
          return;
        }
      } catch (error) {
        for (const pending of batch) pending.reject(error);
        return;
      }
    }
    // Alone, or a key of the batch existed: each on its own.
    await Promise.all(batch.map((pending) => this.#createOne(pending)));
  }

  async #createOne(pending: PendingCreate): Promise<void> {
    try {
      const { key } = pending;
      const txn = await this.#time(() =>
        this.#client
          .if(key, "Create", "==", 0)
          .then(this.#client.put(key).value(pending.value).lease(pending.leaseId))
          .else(this.#client.get(key))
          .options(this.#callOptions(pending.scope))
          .commit(),
      );
      pending.resolve(
        txn.succeeded ? { revision: txn.header.revision } : { held: txn.responses[0]?.response_range.kvs[0] },
      );
    } catch (error) {
      pending.reject(error);
    }
  }
}
