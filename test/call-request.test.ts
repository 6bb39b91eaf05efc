import test from "ava";
import { linkDescriptors } from "../cli/call/descriptor-set.js";
import { InstanceTally } from "../cli/call/instance-tally.js";
import { parseMethodSpec, resolveMethod } from "../cli/call/method-resolver.js";
import { loadProtoFiles } from "../cli/call/proto-files.js";
import { decodeRequest, parseRequest } from "../cli/call/request-json.js";
import type { InstanceStats } from "../client/balancing/balanced-client.js";
import { UsageError } from "../cli/usage-error.js";
import { FIXTURES } from "./helpers/ledger-server.js";

const types = linkDescriptors(await loadProtoFiles(["audit.proto"], [FIXTURES]));
const postRequest = types.getMessage("fixture.ledger.v1.PostRequest");
if (postRequest === undefined) throw new Error("fixture.ledger.v1.PostRequest not linked");

function refusal(run: () => unknown): string {
  const error = (() => {
    try {
      run();
    } catch (thrown) {
      return thrown;
    }
    throw new Error("expected a refusal");
  })();
  if (!(error instanceof UsageError)) throw error;
  return error.message;
}

test("METHOD forms: Method, Service/Method, package.Service/Method, package.Service.Method, /path", (t) => {
  t.deepEqual(parseMethodSpec("Add"), { method: "Add" });
  t.deepEqual(parseMethodSpec("CalculatorService/Add"), { service: "CalculatorService", method: "Add" });
  t.deepEqual(parseMethodSpec("a.b.CalculatorService/Add"), {
    service: "a.b.CalculatorService",
    method: "Add",
  });
  t.deepEqual(parseMethodSpec("a.b.CalculatorService.Add"), {
    service: "a.b.CalculatorService",
    method: "Add",
  });
  t.deepEqual(parseMethodSpec("/a.b.CalculatorService/Add"), {
    service: "a.b.CalculatorService",
    method: "Add",
  });
  for (const bad of ["", "Add!", "a..b/Add", "Svc/"])
    t.throws(() => parseMethodSpec(bad), { instanceOf: UsageError });
});

test("protobufjs descriptors are linked: relative names resolved across files, json names set", (t) => {
  const record = types.getMessage("fixture.audit.v1.AuditRecord");
  t.is(record?.field["kind"]?.enum?.typeName, "fixture.ledger.v1.Kind");
  t.is(postRequest.field["amountCents"]?.jsonName, "amountCents");
  t.is(postRequest.field["at"]?.message?.typeName, "google.protobuf.Timestamp");
  const services = ["fixture.ledger.v1.LedgerService", "fixture.audit.v1.AuditService"];
  t.is(resolveMethod(types, services, parseMethodSpec("History")).methodKind, "server_streaming");
  t.regex(
    refusal(() => resolveMethod(types, services, parseMethodSpec("Post"))),
    /ambiguous/,
  );
  t.is(resolveMethod(types, services, parseMethodSpec("AuditService/Post")).parent.name, "AuditService");
});

test("a request is strict proto3 JSON: the refusal names the field", (t) => {
  const message = parseRequest(
    postRequest,
    '{"accountId":"a","amountCents":"12","kind":"KIND_CREDIT"}',
    types,
  );
  t.is((message as unknown as { amountCents: bigint }).amountCents, 12n);
  t.regex(
    refusal(() => parseRequest(postRequest, '{"x":1}', types)),
    /unknown field "x"/,
  );
  t.regex(
    refusal(() => parseRequest(postRequest, '{"amountCents":1.5}', types)),
    /field "amountCents"/,
  );
  t.regex(
    refusal(() => parseRequest(postRequest, '{"tags":["a",2]}', types)),
    /field "tags"/,
  );
  t.regex(
    refusal(() => parseRequest(postRequest, '{"at":"noon"}', types)),
    /field "at"/,
  );
  t.regex(
    refusal(() => parseRequest(postRequest, "{oops", types)),
    /not valid JSON/,
  );
  t.regex(
    refusal(() => decodeRequest(postRequest, { y: true }, types, "stdin line 4")),
    /^stdin line 4: .*"y"/,
  );
});

function stats(instanceId: string, calls: number, errors = 0): InstanceStats {
  return {
    service: "s",
    instanceId,
    address: "127.0.0.1:1",
    weight: 1,
    effectiveWeight: 1,
    status: "SERVING",
    zone: "",
    calls,
    errors,
    p50Ms: 0,
    p99Ms: 0,
    breaker: "closed",
    outstanding: 0,
    connectivity: "READY",
    ejected: false,
    retained: false,
  };
}

test("the tally adds every lifetime of an instance that leaves and returns", (t) => {
  const tally = new InstanceTally();
  tally.left([stats("a", 30, 2)]); // a leaves after 30 calls
  const totals = tally.totals([stats("a", 12), stats("b", 50)]); // a is back, 12 calls since
  t.deepEqual(
    totals.map((instance) => [instance.instanceId, instance.calls, instance.errors]),
    [
      ["a", 42, 2],
      ["b", 50, 0],
    ],
  );
  t.deepEqual(
    new InstanceTally().totals([]).map((instance) => instance.instanceId),
    [],
  );
  const gone = new InstanceTally();
  gone.left([stats("c", 7)]);
  t.deepEqual(
    gone.totals([]).map((instance) => [instance.instanceId, instance.calls]),
    [["c", 7]],
  );
});
