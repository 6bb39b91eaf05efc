/**
 * Strict proto3 JSON requests (the canonical mapping, as grpcurl reads them): an unknown field or
 * a value of the wrong type is refused with one line naming the field's path.
 */
import {
  fromJson,
  type DescField,
  type DescMessage,
  type JsonValue,
  type Message,
  type Registry,
} from "@bufbuild/protobuf";
import { UsageError } from "../usage-error.js";

/**
 * Parses `text` (JSON) into a message of `schema`. `where` prefixes the error (e.g. `line 3`).
 * @throws UsageError naming the field path (`entries[1].amountCents`) for anything refused.
 */
export function parseRequest(
  schema: DescMessage,
  text: string,
  registry: Registry,
  where = "request",
): Message {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new UsageError(
      `${where} is not valid JSON: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  return decodeRequest(schema, json, registry, where);
}

/** As {@link parseRequest}, from an already parsed JSON value. */
export function decodeRequest(
  schema: DescMessage,
  json: unknown,
  registry: Registry,
  where = "request",
): Message {
  try {
    return fromJson(schema, json as JsonValue, { registry });
  } catch (error) {
    throw new UsageError(`${where}: ${locateProblem(schema, json, registry, "") ?? reason(error)}`);
  }
}

/** Where in `json` decoding as `schema` fails, as a one-line description; undefined if nowhere. */
function locateProblem(
  schema: DescMessage,
  json: unknown,
  registry: Registry,
  path: string,
): string | undefined {
  if (typeof json !== "object" || json === null || Array.isArray(json) || isSpecialJson(schema)) {
    try {
      fromJson(schema, json as JsonValue, { registry });
      return undefined;
    } catch (error) {
      return `${path === "" ? "" : `field "${path}": `}${reason(error)}`;
    }
  }
  for (const [key, value] of Object.entries(json as Record<string, JsonValue>)) {
    const fieldPath = path === "" ? key : `${path}.${key}`;
    const field = schema.fields.find((candidate) => candidate.jsonName === key || candidate.name === key);
    if (field === undefined)
      return `unknown field "${fieldPath}" (${schema.typeName} has ${fieldList(schema)})`;
    try {
      fromJson(schema, { [key]: value }, { registry });
      continue;
    } catch (error) {
      const nested = locateInField(field, value, registry, fieldPath);
      return nested ?? `field "${fieldPath}": ${reason(error)}`;
    }
  }
  return undefined;
}

function locateInField(
  field: DescField,
  value: unknown,
  registry: Registry,
  path: string,
): string | undefined {
  if (field.fieldKind === "message") return locateProblem(field.message, value, registry, path);
  if (field.fieldKind === "list" && field.listKind === "message" && Array.isArray(value)) {
    for (const [index, item] of value.entries()) {
      const problem = locateProblem(field.message, item, registry, `${path}[${index}]`);
      if (problem !== undefined) return problem;
    }
  }
  if (
    field.fieldKind === "map" &&
    field.mapKind === "message" &&
    typeof value === "object" &&
    value !== null
  ) {
    for (const [key, item] of Object.entries(value)) {
      const problem = locateProblem(field.message, item, registry, `${path}["${key}"]`);
      if (problem !== undefined) return problem;
    }
  }
  return undefined;
}

/** Well-known types with a JSON form of their own (Timestamp is a string, Struct any object ...). */
function isSpecialJson(schema: DescMessage): boolean {
  return schema.file.name.startsWith("google/protobuf/") || schema.typeName.startsWith("google.protobuf.");
}

function fieldList(schema: DescMessage): string {
  return schema.fields.length === 0 ? "no fields" : schema.fields.map((field) => field.jsonName).join(", ");
}

/** `@bufbuild/protobuf`'s message without its "cannot decode ... from JSON:" preamble. */
function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^cannot decode [^:]* from JSON: /, "");
}
