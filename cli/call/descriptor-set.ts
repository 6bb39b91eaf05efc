/**
 * Turns FileDescriptorProtos from any source (server reflection, parsed `.proto` files) into one
 * linked `@bufbuild/protobuf` registry.
 *
 * Descriptors from grpc-js servers (`@grpc/reflection` over `@grpc/proto-loader`) and from
 * protobufjs carry relative type names (`Kind` rather than `.pkg.Kind`), files merged per package
 * and no `dependency` list (grpc-node#2595). protoc would have resolved all that; here it is done
 * once, by protobuf's scoping rules, before the registry sees the files. Descriptors from protoc,
 * buf or Go servers are already linked and pass through unchanged.
 */
import { clone, create, createFileRegistry, type FileRegistry } from "@bufbuild/protobuf";
import { protoCamelCase } from "@bufbuild/protobuf/reflect";
import {
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  file_google_protobuf_any,
  file_google_protobuf_api,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_source_context,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_type,
  file_google_protobuf_wrappers,
  type DescriptorProto,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";

/** The well-known types, used when a source references them without sending their files. */
const WELL_KNOWN_FILES: readonly FileDescriptorProto[] = [
  file_google_protobuf_any,
  file_google_protobuf_api,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_source_context,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_type,
  file_google_protobuf_wrappers,
].map((file) => file.proto);

type SymbolKind = "message" | "enum";

interface SymbolEntry {
  readonly kind: SymbolKind;
  readonly file: FileDescriptorProto;
}

/** A descriptor problem: the source's fault, not the user's. */
export class DescriptorError extends Error {}

/**
 * Links `files` (duplicates by name are dropped, the first wins) into a registry of their
 * messages, enums and services. Well-known types referenced but not sent are added.
 * @throws DescriptorError when a type reference resolves nowhere or the files do not link.
 */
export function linkDescriptors(files: readonly FileDescriptorProto[]): FileRegistry {
  const byName = new Map<string, FileDescriptorProto>();
  for (const file of files) if (!byName.has(file.name)) byName.set(file.name, file);
  const symbols = new Map<string, SymbolEntry>();
  for (const file of byName.values()) indexFile(file, symbols);
  // Well-known types only where no source file defines the symbol.
  const wellKnownSymbols = new Map<string, SymbolEntry>();
  for (const file of WELL_KNOWN_FILES) indexFile(file, wellKnownSymbols);

  const linked = new Map<string, FileDescriptorProto>();
  const dependencies = new Map<string, Set<string>>();
  const resolve = (typeName: string, scope: string, where: string): SymbolEntry & { fqn: string } => {
    for (const candidate of candidates(typeName, scope)) {
      const entry = symbols.get(candidate) ?? wellKnownSymbols.get(candidate);
      if (entry !== undefined) return { ...entry, fqn: candidate };
    }
    throw new DescriptorError(`${where} refers to an unknown type "${typeName}"`);
  };
  const pending = [...byName.values()];
  while (pending.length > 0) {
    const original = pending.pop() as FileDescriptorProto;
    if (linked.has(original.name)) continue;
    // A copy: linking never mutates descriptors the caller (or a shared WKT file) holds.
    const file = clone(FileDescriptorProtoSchema, original);
    const needs = new Set(file.dependency);
    const link = (typeName: string, scope: string, where: string): { fqn: string; kind: SymbolKind } => {
      const entry = resolve(typeName, scope, where);
      if (entry.file.name !== file.name) {
        needs.add(entry.file.name);
        if (!byName.has(entry.file.name) && !linked.has(entry.file.name)) {
          byName.set(entry.file.name, entry.file);
          pending.push(entry.file);
        }
      }
      return entry;
    };
    const packagePrefix = file.package === "" ? "" : `${file.package}.`;
    const linkMessage = (message: DescriptorProto, fqn: string): void => {
      for (const field of [...message.field, ...message.extension]) {
        // protobufjs writes json_name "" where protoc writes the camel-case name.
        if (field.jsonName === "") field.jsonName = protoCamelCase(field.name);
        if (field.typeName !== "") {
          const target = link(field.typeName, fqn, `field ${fqn}.${field.name}`);
          field.typeName = `.${target.fqn}`;
          if (target.kind === "enum") field.type = FieldDescriptorProto_Type.ENUM;
          else if (field.type !== FieldDescriptorProto_Type.GROUP)
            field.type = FieldDescriptorProto_Type.MESSAGE;
        }
        if (field.extendee !== "")
          field.extendee = `.${link(field.extendee, fqn, `extension ${field.name}`).fqn}`;
      }
      for (const nested of message.nestedType) linkMessage(nested, `${fqn}.${nested.name}`);
    };
    for (const message of file.messageType) linkMessage(message, `${packagePrefix}${message.name}`);
    for (const extension of file.extension) {
      const scope = file.package;
      if (extension.typeName !== "") {
        const target = link(extension.typeName, scope, `extension ${extension.name}`);
        extension.typeName = `.${target.fqn}`;
        extension.type =
          target.kind === "enum" ? FieldDescriptorProto_Type.ENUM : FieldDescriptorProto_Type.MESSAGE;
      }
      if (extension.extendee !== "")
        extension.extendee = `.${link(extension.extendee, scope, `extension ${extension.name}`).fqn}`;
    }
    for (const service of file.service) {
      for (const method of service.method) {
        const where = `method ${packagePrefix}${service.name}.${method.name}`;
        method.inputType = `.${link(method.inputType, file.package, where).fqn}`;
        method.outputType = `.${link(method.outputType, file.package, where).fqn}`;
      }
    }
    needs.delete(file.name);
    file.dependency = [...needs];
    dependencies.set(file.name, needs);
    linked.set(file.name, file);
  }
  // Dependencies first, as a FileDescriptorSet must be ordered for the registry.
  const ordered: FileDescriptorProto[] = [];
  const visited = new Set<string>();
  const visit = (name: string): void => {
    if (visited.has(name)) return;
    visited.add(name);
    for (const dependency of dependencies.get(name) ?? []) visit(dependency);
    const file = linked.get(name);
    if (file !== undefined) ordered.push(file);
  };
  for (const name of [...linked.keys()].sort()) visit(name);
  for (const file of ordered) file.dependency = file.dependency.filter((name) => linked.has(name));
  try {
    return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
  } catch (error) {
    throw new DescriptorError(
      `the service's descriptors do not link: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

function indexFile(file: FileDescriptorProto, symbols: Map<string, SymbolEntry>): void {
  const prefix = file.package === "" ? "" : `${file.package}.`;
  const addMessage = (message: DescriptorProto, fqn: string): void => {
    if (!symbols.has(fqn)) symbols.set(fqn, { kind: "message", file });
    for (const nested of message.nestedType) addMessage(nested, `${fqn}.${nested.name}`);
    for (const nested of message.enumType) {
      const name = `${fqn}.${nested.name}`;
      if (!symbols.has(name)) symbols.set(name, { kind: "enum", file });
    }
  };
  for (const message of file.messageType) addMessage(message, `${prefix}${message.name}`);
  for (const enumType of file.enumType) {
    const name = `${prefix}${enumType.name}`;
    if (!symbols.has(name)) symbols.set(name, { kind: "enum", file });
  }
}

/**
 * Fully qualified names `typeName` may mean inside `scope`, innermost first (protobuf's scoping:
 * `Kind` inside `a.b.Msg` is tried as `a.b.Msg.Kind`, `a.b.Kind`, `a.Kind`, `Kind`).
 */
function candidates(typeName: string, scope: string): string[] {
  if (typeName.startsWith(".")) return [typeName.slice(1)];
  const names: string[] = [];
  let current = scope;
  for (;;) {
    names.push(current === "" ? typeName : `${current}.${typeName}`);
    if (current === "") return names;
    const dot = current.lastIndexOf(".");
    current = dot < 0 ? "" : current.slice(0, dot);
  }
}
