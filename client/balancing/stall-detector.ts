/**
 * Stall detection: an instance that stops answering (SIGSTOP, a GC death spiral, a dead peer whose
 * TCP connection still looks open) while its siblings keep answering. grpc-js sees nothing wrong
 * (the connection is READY) and a breaker hears nothing until a deadline, so without this every
 * caller's workers pile up on the frozen instance, one by one, and throughput drops to zero.
 *
 * The test is relative, so a pause of the caller itself (GC, a loaded machine), which delays every
 * instance alike, never counts: an instance is stalled when it has attempts in flight, has not
 * answered one for longer than its threshold, AND at least {@link STALL_MIN_ANSWERS} attempts
 * were answered by other instances of the same balancer meanwhile. The threshold is
 * max(floor, {@link STALL_P99_MULTIPLE} × the instance's p99 latency); floor default
 * {@link DEFAULT_STALL_FLOOR_MS}. The silence counts busy time only, summed over spells whose
 * attempts were all cancelled (a hedge won, an attempt was moved) until the instance answers or
 * idles for {@link STALL_IDLE_FORGET_MS}. A stalled instance is skipped by picks (never all of them), and
 * the typed client moves attempts parked on it elsewhere.
 */

/** Default floor of the stall threshold, ms: well above a healthy p99 on one host, well below a 250 ms view. */
export const DEFAULT_STALL_FLOOR_MS = 75;
/** The threshold is at least this many times the instance's own p99 latency. */
export const STALL_P99_MULTIPLE = 3;
/** Answers other instances must have given since the instance's last answer. */
export const STALL_MIN_ANSWERS = 16;

/**
 * Silence of an earlier busy spell is forgotten after the instance sat idle this long, ms: it then
 * starts afresh, so a few attempts cancelled long ago never mark a healthy instance as stalled.
 */
export const STALL_IDLE_FORGET_MS = 1000;

/** One instance's progress, as its balancer tracks it. */
export class InstanceProgress {
  /** When the instance last answered, or became busy (first attempt in flight after idling), ms. */
  #sinceMs = 0;
  /** The balancer's answer count at that moment. */
  #answersAt = 0;
  /** Busy time without an answer from earlier spells that ended in cancellations, ms. */
  #silentMs = 0;
  /** When the last spell ended without an answer (nothing left in flight), ms. */
  #idleSinceMs = 0;

  /** An attempt starts on this instance; `inFlight` counts attempts before this one. */
  started(inFlight: number, nowMs: number, answers: number): void {
    if (inFlight > 0) return;
    if (this.#silentMs > 0 && nowMs - this.#idleSinceMs <= STALL_IDLE_FORGET_MS) {
      // Still unanswered since an earlier spell (hedge losers, moved attempts): the silence goes
      // on. Without this a frozen instance whose every attempt is cancelled by a hedge after 50 ms
      // would look fresh at each pick and never be found stalled.
      this.#sinceMs = nowMs - this.#silentMs;
      return;
    }
    this.#silentMs = 0;
    this.#sinceMs = nowMs;
    this.#answersAt = answers;
  }

  /** The instance answered an attempt (any status it sent, not a cancellation or a deadline). */
  answered(nowMs: number, answers: number): void {
    this.#sinceMs = nowMs;
    this.#answersAt = answers;
    this.#silentMs = 0;
  }

  /**
   * An attempt ended without an answer (cancelled, its deadline, moved off); `inFlight` counts
   * the attempts still in flight on the instance. The spell's silence is kept for the next one.
   */
  unanswered(inFlight: number, nowMs: number): void {
    if (inFlight > 0) return;
    this.#silentMs = nowMs - this.#sinceMs;
    this.#idleSinceMs = nowMs;
  }

  /**
   * True when the instance is stalled (see the module comment).
   * @param inFlight attempts in flight on the instance now.
   * @param answers the balancer's count of answered attempts, all instances.
   */
  isStalled(inFlight: number, nowMs: number, answers: number, thresholdMs: number): boolean {
    return (
      inFlight > 0 && nowMs - this.#sinceMs > thresholdMs && answers - this.#answersAt >= STALL_MIN_ANSWERS
    );
  }
}

/** max(floor, {@link STALL_P99_MULTIPLE} × p99), ms. */
export function stallThresholdMs(floorMs: number, p99Ms: number): number {
  return Math.max(floorMs, STALL_P99_MULTIPLE * p99Ms);
}
