import { Metadata, status } from "@grpc/grpc-js";
import test from "ava";
import { grpcStatusOf, LeaseholdError, statusCodeName } from "./errors.js";

test("from() keeps a LeaseholdError as is", (t) => {
  const error = new LeaseholdError("NOT_FOUND", "gone");
  t.is(LeaseholdError.from(error), error);
});

test("from() maps a grpc-js ServiceError by its status and keeps details, metadata and cause", (t) => {
  const metadata = new Metadata();
  metadata.set("k", "v");
  const serviceError = Object.assign(new Error("3 INVALID_ARGUMENT: b must not be 0"), {
    code: status.INVALID_ARGUMENT,
    details: "b must not be 0",
    metadata,
  });
  const error = LeaseholdError.from(serviceError);
  t.is(error.code, "INVALID_ARGUMENT");
  t.is(error.message, "b must not be 0");
  t.is(error.metadata, metadata);
  t.is(error.cause, serviceError);
  t.false(error.retryable);
  t.is(error.grpcStatus, status.INVALID_ARGUMENT);
});

test("from() maps AbortError to CANCELLED and TimeoutError to DEADLINE_EXCEEDED", (t) => {
  const controller = new AbortController();
  controller.abort();
  t.is(LeaseholdError.from(controller.signal.reason).code, "CANCELLED");
  t.is(LeaseholdError.from(new DOMException("late", "TimeoutError")).code, "DEADLINE_EXCEEDED");
});

test("from() maps opossum rejections: open or shut-down breaker → UNAVAILABLE (retryable)", (t) => {
  const open = LeaseholdError.from(Object.assign(new Error("Breaker is open"), { code: "EOPENBREAKER" }));
  t.is(open.code, "UNAVAILABLE");
  t.true(open.retryable);
  t.is(LeaseholdError.from(Object.assign(new Error("x"), { code: "ESHUTDOWN" })).code, "UNAVAILABLE");
  t.is(LeaseholdError.from(Object.assign(new Error("x"), { code: "ESEMLOCKED" })).code, "RESOURCE_EXHAUSTED");
});

test("from() makes anything else UNKNOWN with its message", (t) => {
  t.is(LeaseholdError.from(new TypeError("boom")).code, "UNKNOWN");
  t.is(LeaseholdError.from(new TypeError("boom")).message, "boom");
  t.is(LeaseholdError.from("text").message, "text");
  t.is(LeaseholdError.from(undefined).code, "UNKNOWN");
  t.is(LeaseholdError.from({ code: 0 }).code, "UNKNOWN");
  t.is(LeaseholdError.from({ code: 99, details: "?" }).code, "UNKNOWN");
});

test("retryable is derived from the code: UNAVAILABLE and RESOURCE_EXHAUSTED only", (t) => {
  t.true(new LeaseholdError("UNAVAILABLE", "").retryable);
  t.true(new LeaseholdError("RESOURCE_EXHAUSTED", "").retryable);
  for (const code of ["DEADLINE_EXCEEDED", "CANCELLED", "INVALID_ARGUMENT", "INTERNAL", "UNKNOWN"] as const) {
    t.false(new LeaseholdError(code, "").retryable, code);
  }
});

test("code names and gRPC status numbers map both ways; toStatusObject serves a handler", (t) => {
  for (let code = 0; code <= 16; code++) t.is(grpcStatusOf(statusCodeName(code)), code);
  t.is(statusCodeName(14), "UNAVAILABLE");
  const object = new LeaseholdError("ALREADY_EXISTS", "taken").toStatusObject();
  t.is(object.code, status.ALREADY_EXISTS);
  t.is(object.details, "taken");
  t.true(new LeaseholdError("INTERNAL", "x") instanceof Error);
  t.is(new LeaseholdError("INTERNAL", "x").name, "LeaseholdError");
});
