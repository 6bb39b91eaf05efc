/**
 * The replicated state of the kv demo: values by key, the sequence number of the last applied
 * write, the results of recent idempotent writes (by request id) and a bounded log of recent
 * writes (for a backup that joins with a slightly older snapshot). Pure: no I/O, no clock.
 */

/** One write as replicated: its effect (an Increment travels as the value it produced). */
export interface KvEntry {
  readonly sequence: number;
  readonly key: string;
  readonly value: string;
  readonly isDeleted: boolean;
  /** "" when the write carried none. */
  readonly requestId: string;
}

/** A write asked of the primary. `requestId` "" means not idempotent. */
export type KvWrite =
  | { readonly kind: "put"; readonly key: string; readonly value: string; readonly requestId: string }
  | { readonly kind: "delete"; readonly key: string; readonly requestId: string }
  | { readonly kind: "increment"; readonly key: string; readonly delta: bigint; readonly requestId: string };

/** What a write came to: its sequence number (and, for an Increment, the new value), or a refusal. */
export type KvWriteResult =
  | { readonly ok: true; readonly sequence: number; readonly value: string }
  | { readonly ok: false; readonly error: string };

/** Options of {@link KvState}. */
export interface KvStateOptions {
  /** Writes kept for {@link KvState.since}; default 100,000. */
  readonly maxLogEntries?: number;
  /** Request ids remembered for idempotent retries (oldest forgotten first); default 100,000. */
  readonly maxRequestIds?: number;
}

/** Longest request id, in UTF-16 code units (up to {@link KvStateOptions.maxRequestIds} are remembered). */
export const MAX_REQUEST_ID_LENGTH = 128;

/** Why `requestId` is refused (INVALID_ARGUMENT), or undefined; "" (none) is accepted. */
export function checkRequestId(requestId: string): string | undefined {
  return requestId.length > MAX_REQUEST_ID_LENGTH
    ? `request_id: longer than ${MAX_REQUEST_ID_LENGTH}`
    : undefined;
}

/** Longest key, in UTF-16 code units. */
export const MAX_KEY_LENGTH = 1024;

/** Why `key` is refused (INVALID_ARGUMENT), or undefined. */
export function checkKey(key: string): string | undefined {
  if (key === "") return "key: required";
  if (key.length > MAX_KEY_LENGTH) return `key: longer than ${MAX_KEY_LENGTH}`;
  return undefined;
}

/** A decimal integer short enough to be an int64 candidate (then compare with the bounds). */
export const INTEGER = /^-?\d{1,19}$/;
export const INT64_MAX = 2n ** 63n - 1n;
export const INT64_MIN = -(2n ** 63n);

/**
 * One kv instance's store: the values, the numbered log of applied writes (the last
 * `maxLogEntries`, default 100,000, for backups that catch up) and the request ids already applied
 * (the last `maxRequestIds`, default 100,000, so a retried write applies once). Pure: no I/O.
 */
export class KvState {
  readonly #values = new Map<string, string>();
  /** request id → the entry (or result) it produced; insertion order = age. */
  readonly #requests = new Map<string, KvEntry>();
  #log: KvEntry[] = [];
  #sequence = 0;
  readonly #maxLogEntries: number;
  readonly #maxRequestIds: number;

  constructor(options: KvStateOptions = {}) {
    this.#maxLogEntries = options.maxLogEntries ?? 100_000;
    this.#maxRequestIds = options.maxRequestIds ?? 100_000;
  }

  /** Sequence number of the last applied write; 0 for an empty store. */
  get sequence(): number {
    return this.#sequence;
  }

  /** Keys held. */
  get size(): number {
    return this.#values.size;
  }

  /** The value of `key`, or undefined when absent. */
  get(key: string): string | undefined {
    return this.#values.get(key);
  }

  /**
   * Turns writes into entries with the sequence numbers that follow {@link sequence}, in order,
   * without applying them (the primary applies them once replicated). A write whose request id was
   * seen (applied, or earlier in `writes`) gets its first result and no entry.
   */
  prepare(writes: readonly KvWrite[]): { entries: KvEntry[]; results: KvWriteResult[] } {
    const entries: KvEntry[] = [];
    const pending = new Map<string, KvEntry>(); // key → latest entry of this batch
    const seen = new Map<string, KvEntry>(); // request id → entry of this batch
    const results = writes.map((write): KvWriteResult => {
      const earlier =
        write.requestId === ""
          ? undefined
          : (seen.get(write.requestId) ?? this.#requests.get(write.requestId));
      if (earlier !== undefined) return { ok: true, sequence: earlier.sequence, value: earlier.value };
      let value = "";
      if (write.kind === "put") value = write.value;
      else if (write.kind === "increment") {
        const latest = pending.get(write.key);
        const current =
          latest === undefined ? this.#values.get(write.key) : latest.isDeleted ? undefined : latest.value;
        if (current !== undefined && !INTEGER.test(current))
          return { ok: false, error: `value of "${write.key}" is not an integer` };
        const next = BigInt(current ?? "0") + write.delta;
        if (next > INT64_MAX || next < INT64_MIN)
          return { ok: false, error: `"${write.key}" would overflow int64` };
        value = next.toString();
      }
      const entry: KvEntry = {
        sequence: this.#sequence + entries.length + 1,
        key: write.key,
        value,
        isDeleted: write.kind === "delete",
        requestId: write.requestId,
      };
      entries.push(entry);
      pending.set(write.key, entry);
      if (write.requestId !== "") seen.set(write.requestId, entry);
      return { ok: true, sequence: entry.sequence, value };
    });
    return { entries, results };
  }

  /**
   * Applies entries in sequence order: those at or below {@link sequence} are skipped (a resend),
   * and application stops at the first gap.
   * @returns true when every entry is applied (or was already), false at a gap.
   */
  apply(entries: readonly KvEntry[]): boolean {
    for (const entry of entries) {
      if (entry.sequence <= this.#sequence) continue;
      if (entry.sequence !== this.#sequence + 1) return false;
      if (entry.isDeleted) this.#values.delete(entry.key);
      else this.#values.set(entry.key, entry.value);
      this.#remember(entry);
      this.#log.push(entry);
      if (this.#log.length > this.#maxLogEntries * 2) this.#log = this.#log.slice(-this.#maxLogEntries);
      this.#sequence = entry.sequence;
    }
    return true;
  }

  /** The entries after `sequence` still in the log, or `undefined` when the log no longer reaches back. */
  since(sequence: number): KvEntry[] | undefined {
    if (sequence >= this.#sequence) return [];
    const first = this.#log[0];
    if (first === undefined || first.sequence > sequence + 1) return undefined;
    return this.#log.slice(sequence + 1 - first.sequence);
  }

  /** The state at {@link sequence}: one entry per key and the remembered request results. */
  snapshot(): { sequence: number; values: KvEntry[]; requests: KvEntry[] } {
    const values = [...this.#values].map(([key, value]) => ({
      sequence: this.#sequence,
      key,
      value,
      isDeleted: false,
      requestId: "",
    }));
    return { sequence: this.#sequence, values, requests: [...this.#requests.values()] };
  }

  /** Replaces everything with a {@link snapshot} (the log starts empty at `sequence`). */
  restore(sequence: number, values: readonly KvEntry[], requests: readonly KvEntry[]): void {
    this.#values.clear();
    for (const entry of values) this.#values.set(entry.key, entry.value);
    this.#requests.clear();
    for (const entry of requests) this.#remember(entry);
    this.#log = [];
    this.#sequence = sequence;
  }

  #remember(entry: KvEntry): void {
    if (entry.requestId === "") return;
    this.#requests.set(entry.requestId, entry);
    if (this.#requests.size > this.#maxRequestIds) {
      const oldest = this.#requests.keys().next();
      if (oldest.done !== true) this.#requests.delete(oldest.value);
    }
  }
}
