import { hostname } from "node:os";
import test from "ava";
import { InvalidArgumentError } from "commander";
import { advertiseAddress, advertisedAddress, instanceIdTemplate } from "../cli/options.js";

test("--id replaces {hostname} with the host name, so compose replicas get their container's name", (t) => {
  t.is(instanceIdTemplate("calc-{hostname}"), `calc-${hostname()}`);
  t.is(instanceIdTemplate("calc-1"), "calc-1");
});

test("--id refuses a result that is not an instance id, naming it", (t) => {
  const error = t.throws(() => instanceIdTemplate("calc 1"), { instanceOf: InvalidArgumentError });
  t.regex(error.message, /"calc 1" is not an instance id/);
  t.throws(() => instanceIdTemplate("x".repeat(129)), { instanceOf: InvalidArgumentError });
});

test("--advertise auto means detect (undefined); anything else must be host:port", (t) => {
  t.is(advertisedAddress(advertiseAddress("auto")), undefined);
  t.is(advertisedAddress(undefined), undefined);
  t.is(advertiseAddress("10.0.0.5:7200"), "10.0.0.5:7200");
  t.throws(() => advertiseAddress("10.0.0.5"), { instanceOf: InvalidArgumentError });
});
