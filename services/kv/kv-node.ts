import { once } from "node:events";
import {
  credentials,
  Metadata,
  status,
  type ChannelCredentials,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import type { Logger } from "pino";
import {
  Consistency,
  KvServiceClient,
  type DeleteRequest,
  type Entry,
  type GetRequest,
  type GetResponse,
  type IncrementRequest,
  type IncrementResponse,
  type JoinRequest,
  type JoinResponse,
  type KvServiceServer,
  type PutRequest,
  type PutResponse,
  type ReplicateRequest,
  type ReplicateResponse,
  type SnapshotRequest,
  type SnapshotResponse,
} from "../../proto/gen/leasehold/demo/v1/kv.js";
import {
  InstanceStatus,
  type Instance,
  type RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";
import { Backoff, sleep } from "../../client/backoff.js";
import { MembershipWatcher } from "../../client/discovery/membership-watcher.js";
import { REDIRECT_METADATA_KEY } from "../../client/redirect/follow-redirect.js";
import type { Registrar, RegistrarState } from "../../client/registration/registrar.js";
import {
  checkKey,
  checkRequestId,
  KvState,
  type KvEntry,
  type KvWrite,
  type KvWriteResult,
} from "./kv-state.js";
import { isOlder, mayStartFresh, selectPrimary, uncoveredBackups } from "./primary.js";

/** Longest value, in UTF-16 code units. */
const MAX_VALUE_LENGTH = 64 * 1024;
/** Keys (and remembered requests) per Snapshot message. */
const SNAPSHOT_CHUNK_ENTRIES = 1000;
const SNAPSHOT_TIMEOUT_MS = 30_000;

/** What {@link KvNode.start} needs of its host. */
export interface KvHost {
  /** The registry, for the Watch of the service's membership. */
  readonly registry: RegistryServiceClient;
  /** The instance's registrar, not started: the node registers DRAINING and turns SERVING when caught up. */
  readonly registrar: Registrar;
}

/** Options of {@link KvNode}. */
export interface KvNodeOptions {
  readonly instanceId: string;
  /** Credentials of the channels to the other instances; default insecure. */
  readonly peerCredentials?: ChannelCredentials | undefined;
  /** Registry name of the kv service; default "kv". */
  readonly service?: string | undefined;
  readonly logger?: Logger | undefined;
  /** Deadline of one Replicate to a backup, ms; a backup that misses it leaves the sync set. Default 1000. */
  readonly replicateTimeoutMs?: number | undefined;
  /** An idle primary sends each backup an empty Replicate this often, ms. Default 500. */
  readonly heartbeatMs?: number | undefined;
  /**
   * A backup that hears nothing from its primary this long marks itself DRAINING and catches up,
   * ms; never sooner than the primary's lease TTL + 1.5 s (so a dead primary's key expires first).
   * Default 2000.
   */
  readonly fenceAfterMs?: number | undefined;
  /**
   * How long a write waits for every SERVING backup to be in the sync set (one that left it must
   * turn DRAINING or leave), ms; then it fails UNAVAILABLE with its outcome unknown. Default 10000.
   */
  readonly writeTimeoutMs?: number | undefined;
}

/**
 * What the node is: `bootstrapping` (DRAINING: fetching a snapshot and joining the primary),
 * `backup` (SERVING, in the primary's sync set), `primary`, `closed`.
 */
export type KvRole = "idle" | "bootstrapping" | "backup" | "primary" | "closed";

type Queued =
  | { readonly kind: "write"; readonly write: KvWrite; settle(result: KvWriteResult | ServiceError): void }
  | {
      readonly kind: "join";
      readonly request: JoinRequest;
      settle(result: JoinResponse | ServiceError): void;
    };

/** Time past a silent primary's TTL before a backup fences itself: etcd's expiry lag (~0.5 s), the Watch, a tick. */
const FENCE_MARGIN_MS = 1500;

/**
 * One instance of the replicated kv store (issue 8 item 5). Every instance watches the service's
 * membership; the primary is the SERVING instance with the lowest create revision
 * ({@link selectPrimary}). The primary batches writes (group commit), gives each a sequence number,
 * sends the batch to every backup of its sync set and applies it, and acknowledges only when every
 * instance SERVING in its membership is in the sync set: a backup that failed a Replicate leaves
 * the sync set, and writes wait (up to `writeTimeoutMs`) until it shows DRAINING or leaves.
 *
 * A backup accepts Replicate only from the primary it joined; when it misses a write, hears nothing
 * for `fenceAfterMs`, or sees another primary, it marks itself DRAINING and bootstraps again:
 * Snapshot from the primary, then Join (the primary sends the writes since the snapshot's sequence
 * and adds it to the sync set), then SERVING. An instance older than the primary takes a fresh
 * registration first, so turning SERVING never changes who is primary; only a primary's leaving
 * (lease expiry, DRAINING) does. When the primary dies, the next-oldest SERVING instance (in the
 * sync set, so holding every acknowledged write) takes over once the dead key expires.
 *
 * Lifecycle: construct (no I/O) → {@link start} → {@link close} (idempotent; then the host drains
 * and deregisters).
 */
export class KvNode {
  readonly #options: Required<Omit<KvNodeOptions, "logger" | "peerCredentials">>;
  readonly #peerCredentials: ChannelCredentials;
  readonly #logger: Logger | undefined;
  #host: KvHost | undefined;
  #watcher: MembershipWatcher | undefined;
  #state = new KvState();
  #role: KvRole = "idle";
  /** The status this node last set for itself (the membership may not show it yet). */
  #isServing = false;
  /** The primary whose Replicate this node applies. */
  #following: string | undefined;
  #lastHeardAtMs = 0;
  readonly #syncSet = new Map<string, string>();
  readonly #peers = new Map<string, KvServiceClient>();
  #queue: Queued[] = [];
  #wakeLoop: (() => void) | undefined;
  readonly #membershipWaiters = new Set<() => void>();
  #loop: Promise<void> | undefined;
  #bootstrap: Promise<void> | undefined;
  /** True until the running bootstrap leaves its loop (set synchronously, unlike {@link #bootstrap}). */
  #isBootstrapLooping = false;
  #timer: NodeJS.Timeout | undefined;
  /** The Snapshot stream being read, cancelled by {@link close}. */
  #snapshotCall: { cancel(): void } | undefined;

  constructor(options: KvNodeOptions) {
    this.#options = {
      instanceId: options.instanceId,
      service: options.service ?? "kv",
      replicateTimeoutMs: options.replicateTimeoutMs ?? 1000,
      heartbeatMs: options.heartbeatMs ?? 500,
      fenceAfterMs: options.fenceAfterMs ?? 2000,
      writeTimeoutMs: options.writeTimeoutMs ?? 10_000,
    };
    this.#logger = options.logger;
    this.#peerCredentials = options.peerCredentials ?? credentials.createInsecure();
  }

  get role(): KvRole {
    return this.#role;
  }

  /** Sequence number of the last write this instance applied. */
  get sequence(): number {
    return this.#state.sequence;
  }

  /**
   * Watches the membership, registers DRAINING and starts bootstrapping in the background (the
   * node turns SERVING once it is primary or a caught-up backup).
   * @throws the registry's ServiceError when the registration is refused.
   */
  async start(host: KvHost): Promise<void> {
    if (this.#role !== "idle" || this.#host !== undefined) return;
    this.#host = host;
    const watcher = new MembershipWatcher({
      registry: host.registry,
      service: this.#options.service,
      logger: this.#logger,
    });
    this.#watcher = watcher;
    watcher.subscribe(() => this.#onMembership());
    watcher.start();
    await host.registrar.update({ status: InstanceStatus.INSTANCE_STATUS_DRAINING });
    await host.registrar.start();
    await watcher.ready();
    this.#timer = setInterval(() => this.#tick(), this.#options.heartbeatMs);
    this.#startBootstrap();
  }

  /**
   * The registrar's state changes (`RegistrarOptions.onStateChanged`). A registration again after
   * a lost lease (the key was gone, so the primary may have acknowledged writes without this
   * instance) registers DRAINING and catches up: set synchronously, before the Register goes out.
   */
  registrarStateChanged(state: RegistrarState, previous: RegistrarState): void {
    if (state !== "registering" || previous === "idle" || this.#role === "closed" || this.#host === undefined)
      return;
    this.#isServing = false;
    void this.#host.registrar
      .update({ status: InstanceStatus.INSTANCE_STATUS_DRAINING })
      .catch(() => undefined); // no lease now: only remembered for the Register
    if (this.#role === "primary" || this.#role === "backup") this.#rebootstrap("lease lost");
  }

  /** Stops serving writes (queued ones fail UNAVAILABLE) and replication. Idempotent. */
  async close(): Promise<void> {
    if (this.#role === "closed") return;
    this.#role = "closed";
    clearInterval(this.#timer);
    this.#failQueued("instance is shutting down");
    this.#wakeLoop?.();
    for (const wake of this.#membershipWaiters) wake();
    this.#snapshotCall?.cancel();
    await Promise.allSettled([this.#loop, this.#bootstrap]);
    await this.#watcher?.close();
    for (const peer of this.#peers.values()) peer.close();
    this.#peers.clear();
  }

  /** The grpc-js handlers of `KvService`. */
  implementation(): KvServiceServer {
    const me = this.#options.instanceId;
    return {
      put: (call: ServerUnaryCall<PutRequest, PutResponse>, callback: sendUnaryData<PutResponse>) => {
        const { key, value, requestId } = call.request;
        const invalid =
          checkKey(key) ??
          checkRequestId(requestId) ??
          (value.length > MAX_VALUE_LENGTH ? `value: longer than ${MAX_VALUE_LENGTH}` : undefined);
        if (invalid !== undefined) return callback(invalidArgument(invalid));
        this.#write(
          { kind: "put", key, value, requestId },
          (result) => callback(null, { sequence: String(result.sequence), instanceId: me }),
          callback,
        );
      },
      delete: (call: ServerUnaryCall<DeleteRequest, PutResponse>, callback: sendUnaryData<PutResponse>) => {
        const { key, requestId } = call.request;
        const invalid = checkKey(key) ?? checkRequestId(requestId);
        if (invalid !== undefined) return callback(invalidArgument(invalid));
        this.#write(
          { kind: "delete", key, requestId },
          (result) => callback(null, { sequence: String(result.sequence), instanceId: me }),
          callback,
        );
      },
      increment: (
        call: ServerUnaryCall<IncrementRequest, IncrementResponse>,
        callback: sendUnaryData<IncrementResponse>,
      ) => {
        const { key, requestId } = call.request;
        const invalid = checkKey(key) ?? checkRequestId(requestId);
        if (invalid !== undefined) return callback(invalidArgument(invalid));
        const delta = BigInt(call.request.delta === "0" ? "1" : call.request.delta);
        this.#write(
          { kind: "increment", key, delta, requestId },
          (result) =>
            callback(null, { value: result.value, sequence: String(result.sequence), instanceId: me }),
          callback,
        );
      },
      get: (call: ServerUnaryCall<GetRequest, GetResponse>, callback: sendUnaryData<GetResponse>) => {
        const invalid = checkKey(call.request.key);
        if (invalid !== undefined) return callback(invalidArgument(invalid));
        const isStale = call.request.consistency === Consistency.CONSISTENCY_STALE;
        if (!isStale && this.#role !== "primary") return callback(this.#notPrimary());
        if (this.#role !== "primary" && this.#role !== "backup")
          return callback({ code: status.UNAVAILABLE, details: `${me} is catching up` });
        const value = this.#state.get(call.request.key);
        callback(null, {
          found: value !== undefined,
          value: value ?? "",
          sequence: String(this.#state.sequence),
          instanceId: me,
        });
      },
      replicate: (
        call: ServerUnaryCall<ReplicateRequest, ReplicateResponse>,
        callback: sendUnaryData<ReplicateResponse>,
      ) => callback(...this.#onReplicate(call.request)),
      snapshot: (call: ServerWritableStream<SnapshotRequest, SnapshotResponse>) =>
        void this.#sendSnapshot(call).catch((error: unknown) => {
          this.#logger?.warn({ err: error }, "snapshot stream failed");
          call.destroy(error instanceof Error ? error : new Error(String(error)));
        }),
      join: (call: ServerUnaryCall<JoinRequest, JoinResponse>, callback: sendUnaryData<JoinResponse>) => {
        if (this.#role !== "primary") return callback(this.#notPrimary());
        this.#enqueue({
          kind: "join",
          request: call.request,
          settle: (result) => ("code" in result ? callback(result) : callback(null, result)),
        });
      },
    };
  }

  // ---- membership -------------------------------------------------------------------------

  /** The membership with this instance's own status as it last set it. */
  #view(): Instance[] {
    const me = this.#options.instanceId;
    const serving = this.#isServing
      ? InstanceStatus.INSTANCE_STATUS_SERVING
      : InstanceStatus.INSTANCE_STATUS_DRAINING;
    return (this.#watcher?.current().instances ?? []).map((instance) =>
      instance.instanceId === me ? { ...instance, status: serving } : instance,
    );
  }

  #onMembership(): void {
    for (const wake of this.#membershipWaiters) wake();
    const me = this.#options.instanceId;
    const view = this.#view();
    for (const [address, peer] of this.#peers)
      if (!view.some((instance) => instance.address === address)) {
        peer.close();
        this.#peers.delete(address);
      }
    const primary = selectPrimary(view);
    if (this.#role === "primary") {
      if (primary?.instanceId !== me)
        return this.#rebootstrap(`primary is now ${primary?.instanceId ?? "nobody"}`);
      for (const id of this.#syncSet.keys())
        if (!view.some((instance) => instance.instanceId === id)) this.#syncSet.delete(id);
    } else if (this.#role === "backup") {
      // Deregistered (the `u` key) or the lease expired: the primary no longer counts on this one.
      if (!view.some((instance) => instance.instanceId === me))
        return this.#rebootstrap("no longer registered");
      if (primary?.instanceId === me) this.#promote();
      else if (primary?.instanceId !== this.#following)
        this.#rebootstrap(
          `primary changed from ${this.#following ?? "nobody"} to ${primary?.instanceId ?? "nobody"}`,
        );
    }
  }

  /** Resolves on the next membership change, or after `timeoutMs`. */
  async #nextMembership(timeoutMs: number): Promise<void> {
    let wake = (): void => undefined;
    const changed = new Promise<void>((resolve) => (wake = resolve));
    this.#membershipWaiters.add(wake);
    const timer = setTimeout(wake, timeoutMs);
    await changed;
    clearTimeout(timer);
    this.#membershipWaiters.delete(wake);
  }

  #tick(): void {
    if (this.#role !== "backup") return;
    // Not before the silent primary's own lease could have expired (its TTL + FENCE_MARGIN_MS): a
    // dead primary's key must go first, so the next-oldest backup, still SERVING, takes over. A
    // backup fenced sooner (DRAINING) is passed over for a younger one (seen in a demo run: kv-3,
    // not kv-2, took over, with fenceAfterMs 2 s under a 3 s TTL).
    const primary = this.#watcher?.current().instances.find((i) => i.instanceId === this.#following);
    const fenceMs = Math.max(
      this.#options.fenceAfterMs,
      Number(primary?.ttlSeconds ?? 0) * 1000 + FENCE_MARGIN_MS,
    );
    if (Date.now() - this.#lastHeardAtMs > fenceMs)
      this.#rebootstrap(`no word from primary ${this.#following ?? "?"} for ${fenceMs} ms`);
  }

  // ---- roles ------------------------------------------------------------------------------

  #promote(): void {
    this.#logger?.info(
      { sequence: this.#state.sequence, previous: this.#following },
      "kv: taking over as primary",
    );
    this.#role = "primary";
    this.#following = undefined;
    this.#syncSet.clear();
    this.#loop ??= this.#commitLoop().finally(() => (this.#loop = undefined));
  }

  /** Leaves the primary or backup role: DRAINING, then bootstrap from the (new) primary. */
  #rebootstrap(reason: string): void {
    if (this.#role === "closed" || this.#role === "bootstrapping") return;
    this.#logger?.warn({ reason, role: this.#role }, "kv: catching up again");
    this.#role = "bootstrapping";
    this.#following = undefined;
    this.#syncSet.clear();
    this.#failQueued(`no longer primary: ${reason}; outcome unknown`);
    this.#startBootstrap();
  }

  #startBootstrap(): void {
    if (this.#role === "closed") return;
    this.#role = "bootstrapping";
    // A run that has left its loop (it is only settling) would not see this role: start another.
    if (this.#isBootstrapLooping) return;
    this.#isBootstrapLooping = true;
    const run: Promise<void> = this.#runBootstrap().finally(() => {
      if (this.#bootstrap === run) this.#bootstrap = undefined;
    });
    this.#bootstrap = run;
  }

  async #runBootstrap(): Promise<void> {
    // The finally clears the flag as the loop is left, before the returned promise settles.
    try {
      const me = this.#options.instanceId;
      const registrar = this.#registrar();
      const backoff = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 });
      while (this.#role === "bootstrapping") {
        try {
          if (this.#isServing) {
            this.#isServing = false;
            await registrar.update({ status: InstanceStatus.INSTANCE_STATUS_DRAINING });
          }
          const view = this.#view();
          const self = view.find((instance) => instance.instanceId === me);
          const primary = selectPrimary(view);
          if (self === undefined || self.createRevision === "0") {
            await this.#nextMembership(1000);
            continue;
          }
          if (primary === undefined) {
            if (!mayStartFresh(view, me)) {
              await this.#nextMembership(1000);
              continue;
            }
            this.#logger?.info({ sequence: this.#state.sequence }, "kv: nobody serving; starting as primary");
            await this.#turnServing();
            if (this.#role === "bootstrapping") this.#promote();
            return;
          }
          if (isOlder(self, primary)) {
            // Turning SERVING would make this instance the primary without the primary's writes:
            // take a fresh (youngest) registration first.
            this.#logger?.info(
              { primary: primary.instanceId },
              "kv: older than the primary; registering again",
            );
            await registrar.stop();
            await registrar.start();
            while (
              this.#role === "bootstrapping" &&
              this.#view().find((i) => i.instanceId === me)?.createRevision === self.createRevision
            )
              await this.#nextMembership(1000);
            continue;
          }
          const peer = this.#peer(primary.address);
          await this.#fetchSnapshot(peer);
          this.#following = primary.instanceId;
          this.#lastHeardAtMs = Date.now();
          await unary<JoinRequest, JoinResponse>(
            (request, metadata, options, callback) => peer.join(request, metadata, options, callback),
            { instanceId: me, address: self.address, sequence: String(this.#state.sequence) },
            this.#options.replicateTimeoutMs * 3,
          );
          if (
            this.#role !== "bootstrapping" ||
            selectPrimary(this.#view())?.instanceId !== primary.instanceId
          )
            continue;
          this.#role = "backup";
          this.#lastHeardAtMs = Date.now();
          await this.#turnServing();
          // Sent back to bootstrapping (or promoted) while the registry answered: loop again.
          if (this.#role !== "backup") continue;
          this.#logger?.info(
            { primary: primary.instanceId, sequence: this.#state.sequence },
            "kv: serving as backup",
          );
          return;
        } catch (error) {
          if ((this.#role as KvRole) === "closed") return;
          this.#following = undefined;
          if (this.#role === "backup") this.#role = "bootstrapping";
          this.#logger?.warn({ err: error }, "kv: bootstrap attempt failed; retrying");
          await sleep(backoff.next());
        }
      }
    } finally {
      this.#isBootstrapLooping = false;
    }
  }

  async #turnServing(): Promise<void> {
    this.#isServing = true;
    await this.#registrar().update({ status: InstanceStatus.INSTANCE_STATUS_SERVING });
  }

  #registrar(): Registrar {
    if (this.#host === undefined) throw new Error("kv node not started");
    return this.#host.registrar;
  }

  async #fetchSnapshot(peer: KvServiceClient): Promise<void> {
    const call = peer.snapshot(
      { instanceId: this.#options.instanceId },
      { deadline: Date.now() + SNAPSHOT_TIMEOUT_MS },
    );
    let sequence: number | undefined;
    const values: KvEntry[] = [];
    const requests: KvEntry[] = [];
    this.#snapshotCall = call;
    try {
      for await (const chunk of call as AsyncIterable<SnapshotResponse>) {
        sequence = Number(chunk.sequence);
        values.push(...chunk.entries.map(fromWire));
        requests.push(...chunk.requests.map(fromWire));
      }
    } finally {
      this.#snapshotCall = undefined;
    }
    if (sequence === undefined) throw new Error("empty snapshot stream");
    this.#state.restore(sequence, values, requests);
    this.#logger?.info({ sequence, keys: values.length }, "kv: snapshot applied");
  }

  async #sendSnapshot(call: ServerWritableStream<SnapshotRequest, SnapshotResponse>): Promise<void> {
    if (this.#role !== "primary") {
      call.emit("error", this.#notPrimary());
      return;
    }
    call.on("error", () => undefined);
    // A cancelled stream never drains: stop waiting (and drop the copy) when the reader leaves.
    const cancelled = new AbortController();
    call.once("cancelled", () => cancelled.abort());
    const { sequence, values, requests } = this.#state.snapshot();
    for (
      let index = 0;
      index === 0 || index < Math.max(values.length, requests.length);
      index += SNAPSHOT_CHUNK_ENTRIES
    ) {
      if (call.cancelled) return;
      const chunk: SnapshotResponse = {
        sequence: String(sequence),
        entries: values.slice(index, index + SNAPSHOT_CHUNK_ENTRIES).map(toWire),
        requests: requests.slice(index, index + SNAPSHOT_CHUNK_ENTRIES).map(toWire),
      };
      if (!call.write(chunk))
        await once(call, "drain", { signal: cancelled.signal }).catch((error: unknown) => {
          if (!call.cancelled) throw error;
        });
    }
    if (!call.cancelled) call.end();
  }

  #onReplicate(request: ReplicateRequest): [ServiceError | null, ReplicateResponse?] {
    if (this.#following === undefined || request.primaryId !== this.#following)
      return [
        {
          code: status.FAILED_PRECONDITION,
          details: `${this.#options.instanceId} does not follow ${request.primaryId}`,
        } as ServiceError,
      ];
    this.#lastHeardAtMs = Date.now();
    const isWhole = this.#state.apply(request.entries.map(fromWire));
    if ((!isWhole || Number(request.primarySequence) > this.#state.sequence) && this.#role === "backup") {
      // Missed a write: answer what was applied (the primary drops this backup) and catch up.
      queueMicrotask(() =>
        this.#rebootstrap(`missed writes (have ${this.#state.sequence}, primary ${request.primarySequence})`),
      );
    }
    return [null, { appliedSequence: String(this.#state.sequence) }];
  }

  // ---- writes (primary) -------------------------------------------------------------------

  #write(
    write: KvWrite,
    answer: (result: { sequence: number; value: string }) => void,
    fail: (error: ServiceError) => void,
  ): void {
    if (this.#role !== "primary") return fail(this.#notPrimary());
    this.#enqueue({
      kind: "write",
      write,
      settle: (result) => {
        if ("code" in result) fail(result);
        else if (!result.ok)
          fail({ code: status.FAILED_PRECONDITION, details: result.error } as ServiceError);
        else answer(result);
      },
    });
  }

  #enqueue(item: Queued): void {
    this.#queue.push(item);
    this.#wakeLoop?.();
  }

  #failQueued(details: string): void {
    const queued = this.#queue;
    this.#queue = [];
    for (const item of queued) item.settle({ code: status.UNAVAILABLE, details } as ServiceError);
  }

  /** Group commit: one batch at a time (so backups see sequence numbers in order), heartbeats when idle. */
  async #commitLoop(): Promise<void> {
    while (this.#role === "primary") {
      if (this.#queue.length === 0) {
        let heartbeat: NodeJS.Timeout | undefined;
        await new Promise<void>((resolve) => {
          this.#wakeLoop = resolve;
          heartbeat = setTimeout(resolve, this.#options.heartbeatMs);
        });
        clearTimeout(heartbeat);
        this.#wakeLoop = undefined;
        if (this.#role !== "primary") break;
        if (this.#queue.length === 0) {
          await this.#replicateAll([]);
          continue;
        }
      }
      const batch = this.#queue;
      this.#queue = [];
      const writes = batch.filter((item) => item.kind === "write");
      if (writes.length > 0) await this.#commit(writes);
      for (const item of batch) if (item.kind === "join") await this.#admit(item);
    }
  }

  async #commit(writes: readonly Extract<Queued, { kind: "write" }>[]): Promise<void> {
    const { entries, results } = this.#state.prepare(writes.map((item) => item.write));
    let failure: string | undefined;
    if (entries.length > 0) {
      await this.#replicateAll(entries);
      // A new primary's snapshot may have been restored meanwhile: this batch no longer follows it.
      if (this.#role !== "primary" || this.#state.sequence !== (entries[0]?.sequence ?? 0) - 1)
        failure = "lost the primary role while replicating";
      else {
        this.#state.apply(entries);
        failure = await this.#awaitSyncSetCoversServing();
      }
    }
    writes.forEach((item, index) => {
      const result = results[index];
      if (failure !== undefined || result === undefined)
        item.settle({
          code: status.UNAVAILABLE,
          details: `not acknowledged (${failure ?? "no result"}); outcome unknown`,
        } as ServiceError);
      else item.settle(result);
    });
  }

  /** Sends `entries` (empty: a heartbeat) to every backup of the sync set; drops those that fail. */
  async #replicateAll(entries: readonly KvEntry[]): Promise<void> {
    const primarySequence = String(entries.at(-1)?.sequence ?? this.#state.sequence);
    const request: ReplicateRequest = {
      primaryId: this.#options.instanceId,
      entries: entries.map(toWire),
      primarySequence,
    };
    await Promise.all(
      [...this.#syncSet].map(async ([instanceId, address]) => {
        try {
          await this.#replicateTo(address, request);
        } catch (error) {
          this.#syncSet.delete(instanceId);
          this.#logger?.warn({ err: error, backup: instanceId }, "kv: backup left the sync set");
        }
      }),
    );
  }

  async #replicateTo(address: string, request: ReplicateRequest): Promise<void> {
    const peer = this.#peer(address);
    const response = await unary<ReplicateRequest, ReplicateResponse>(
      (message, metadata, options, callback) => peer.replicate(message, metadata, options, callback),
      request,
      this.#options.replicateTimeoutMs,
    );
    if (BigInt(response.appliedSequence) < BigInt(request.primarySequence))
      throw new Error(`backup at ${response.appliedSequence}, primary at ${request.primarySequence}`);
  }

  /**
   * Waits until every other instance SERVING in the membership is in the sync set (a backup that
   * left it must turn DRAINING or leave before a write counts as acknowledged).
   * @returns undefined when covered, else why not (lost the primary role, `writeTimeoutMs` passed).
   */
  async #awaitSyncSetCoversServing(): Promise<string | undefined> {
    const deadline = Date.now() + this.#options.writeTimeoutMs;
    for (;;) {
      if (this.#role !== "primary") return "lost the primary role";
      const uncovered = uncoveredBackups(this.#view(), this.#options.instanceId, this.#syncSet);
      if (uncovered.length === 0) return undefined;
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0)
        return `SERVING backups not in sync: ${uncovered.map((instance) => instance.instanceId).join(", ")}`;
      await this.#nextMembership(Math.min(remainingMs, this.#options.heartbeatMs));
      // The loop is held here: keep the backups that are in sync from fencing themselves.
      await this.#replicateAll([]);
    }
  }

  async #admit(item: Extract<Queued, { kind: "join" }>): Promise<void> {
    const { instanceId, address, sequence } = item.request;
    const entries = this.#state.since(Number(sequence));
    if (entries === undefined) {
      item.settle({
        code: status.FAILED_PRECONDITION,
        details: `snapshot at ${sequence} is older than the primary's log; take a new one`,
      } as ServiceError);
      return;
    }
    try {
      await this.#replicateTo(address, {
        primaryId: this.#options.instanceId,
        entries: entries.map(toWire),
        primarySequence: String(this.#state.sequence),
      });
    } catch (error) {
      item.settle({
        code: status.UNAVAILABLE,
        details: `catching up ${instanceId} failed: ${String(error)}`,
      } as ServiceError);
      return;
    }
    this.#syncSet.set(instanceId, address);
    this.#logger?.info(
      { backup: instanceId, sequence: this.#state.sequence },
      "kv: backup joined the sync set",
    );
    item.settle({ sequence: String(this.#state.sequence) });
  }

  /** FAILED_PRECONDITION with the primary's address in the redirect trailer, or UNAVAILABLE with no primary. */
  #notPrimary(): ServiceError {
    const primary = selectPrimary(this.#view());
    if (primary === undefined || primary.instanceId === this.#options.instanceId)
      return { code: status.UNAVAILABLE, details: "no kv primary is known yet; retry" } as ServiceError;
    const metadata = new Metadata();
    metadata.set(REDIRECT_METADATA_KEY, primary.address);
    return {
      code: status.FAILED_PRECONDITION,
      details: `${this.#options.instanceId} is not the primary; the primary is ${primary.instanceId} at ${primary.address}`,
      metadata,
    } as ServiceError;
  }

  #peer(address: string): KvServiceClient {
    let peer = this.#peers.get(address);
    if (peer === undefined) {
      peer = new KvServiceClient(address, this.#peerCredentials);
      this.#peers.set(address, peer);
    }
    return peer;
  }
}

function invalidArgument(details: string): ServiceError {
  return { code: status.INVALID_ARGUMENT, details } as ServiceError;
}

function toWire(entry: KvEntry): Entry {
  return {
    sequence: String(entry.sequence),
    key: entry.key,
    value: entry.value,
    deleted: entry.isDeleted,
    requestId: entry.requestId,
  };
}

function fromWire(entry: Entry): KvEntry {
  return {
    sequence: Number(entry.sequence),
    key: entry.key,
    value: entry.value,
    isDeleted: entry.deleted,
    requestId: entry.requestId,
  };
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: number },
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

async function unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, timeoutMs: number): Promise<Res> {
  return await new Promise<Res>((resolve, reject) =>
    method(request, new Metadata(), { deadline: Date.now() + timeoutMs }, (error, response) =>
      error === null ? resolve(response) : reject(error),
    ),
  );
}
