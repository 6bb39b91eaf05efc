import type { Pickable } from "../../client/balancing/picker.js";

/**
 * A serving, ready, admitting instance for picker unit tests, with nothing outstanding; `extra`
 * overrides any field or adds what a policy reads (e.g. `load`, `rtt`).
 */
export function fakePickable<E extends object = object>(
  instanceId: string,
  weight = 1,
  extra?: E & Partial<Pickable>,
): Pickable & { outstanding: number } & E {
  return {
    instanceId,
    weight,
    isServing: true,
    isBreakerAdmitting: true,
    isReady: true,
    outstanding: 0,
    ...extra,
  } as Pickable & { outstanding: number } & E;
}
