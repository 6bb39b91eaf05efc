import { pino, type Logger } from "pino";

/**
 * JSON logs (pino) on stderr, so stdout stays for human output. Level from `LEASEHOLD_LOG_LEVEL`,
 * default `info` (`warn` for the interactive commands that draw on the terminal).
 */
export function createLogger(name: string, defaultLevel = "info"): Logger {
  return pino({ name, level: process.env["LEASEHOLD_LOG_LEVEL"] ?? defaultLevel }, pino.destination(2));
}
