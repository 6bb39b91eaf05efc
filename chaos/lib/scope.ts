/**
 * Everything a scenario starts is registered in its {@link Scope} and closed in reverse order by
 * {@link Scope.close}, even when the scenario throws: processes, clients, timers, temp dirs.
 */
export class Scope {
  readonly #cleanups: { name: string; run: () => unknown }[] = [];
  #isClosed = false;

  /** Registers `run` to be called at close (last registered, first run). */
  defer(name: string, run: () => unknown): void {
    if (this.#isClosed) throw new Error(`scope closed; cannot defer ${name}`);
    this.#cleanups.push({ name, run });
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  /** Runs every cleanup once, in reverse order; a failing cleanup is reported and the rest still run. */
  async close(): Promise<string[]> {
    this.#isClosed = true;
    const failures: string[] = [];
    for (let cleanup = this.#cleanups.pop(); cleanup !== undefined; cleanup = this.#cleanups.pop()) {
      try {
        await withTimeout(Promise.resolve(cleanup.run()), 15_000, `cleanup ${cleanup.name}`);
      } catch (error) {
        failures.push(`${cleanup.name}: ${messageOf(error)}`);
      }
    }
    return failures;
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `promise`, or a rejection naming `what` after `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `probe` every `intervalMs` until it returns something other than undefined/false; returns
 * undefined after `timeoutMs` (the caller decides whether that is a miss). Bounded, never spins.
 */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  { timeoutMs, intervalMs = 50 }: { timeoutMs: number; intervalMs?: number },
): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch {
      // not yet
    }
    if (Date.now() >= deadline) return undefined;
    await sleep(intervalMs);
  }
}

/** Like {@link waitFor}, but throws naming `what` on timeout (for set-up steps, not measurements). */
export async function mustWaitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  timeoutMs = 20_000,
): Promise<T> {
  const value = await waitFor(probe, { timeoutMs });
  if (value === undefined) throw new Error(`set-up: timed out after ${timeoutMs} ms waiting for ${what}`);
  return value;
}
