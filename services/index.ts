import { calculator } from "./calculator.js";
import type { DemoService } from "./demo-service.js";
import { echo } from "./echo.js";

/** Every demo service by registry name. */
export const DEMO_SERVICES: Readonly<Record<string, DemoService>> = Object.freeze({ calculator, echo });

export type { DemoService } from "./demo-service.js";
