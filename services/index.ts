import { calculator } from "./calculator.js";
import type { DemoService } from "./demo-service.js";
import { echo } from "./echo.js";
import { kv } from "./kv.js";

/** Every demo service by registry name. */
export const DEMO_SERVICES: Readonly<Record<string, DemoService>> = Object.freeze({ calculator, echo, kv });

export type { DemoService, StatefulInstance } from "./demo-service.js";
