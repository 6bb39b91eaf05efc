/**
 * `--proto FILE --import-path DIR`: parses `.proto` sources into FileDescriptorProtos, as grpcurl's
 * `-proto`/`-import-path` do. protobufjs parses (it is what `@grpc/proto-loader` uses); its
 * descriptors are linked afterwards by `linkDescriptors`.
 */
import { existsSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import protobuf from "protobufjs";
import descriptor from "protobufjs/ext/descriptor/index.js";
import { UsageError } from "../usage-error.js";

/** What `protobufjs/ext/descriptor` adds to a Root. */
interface DescribableRoot {
  toDescriptor(syntax: string): protobuf.Message;
}

/**
 * Parses `files` and everything they import. A relative path (a file or an import) is looked up
 * in `importPaths` in order, then next to the importing file; with no import paths, from the
 * current directory. `google/protobuf/*.proto` resolve without files.
 * @throws UsageError naming the file for a missing file or a syntax error.
 */
export async function loadProtoFiles(
  files: readonly string[],
  importPaths: readonly string[],
): Promise<FileDescriptorProto[]> {
  const searchPaths = importPaths.length === 0 ? ["."] : importPaths;
  const root = new protobuf.Root();
  root.resolvePath = (origin: string, target: string): string => {
    if (isAbsolute(target)) return target;
    for (const directory of searchPaths) {
      const candidate = resolve(directory, target);
      if (existsSync(candidate)) return candidate;
    }
    // protobufjs's own rule: relative to the importing file (and its bundled google/protobuf).
    return origin === "" ? resolve(target) : join(dirname(origin), target);
  };
  try {
    await root.load([...files], { keepCase: true, alternateCommentMode: false });
    root.resolveAll();
  } catch (error) {
    throw new UsageError(`cannot load --proto: ${error instanceof Error ? error.message : String(error)}`);
  }
  const set = (root as unknown as DescribableRoot).toDescriptor("proto3");
  const bytes = descriptor.FileDescriptorSet.encode(set).finish();
  return fromBinary(FileDescriptorSetSchema, bytes).file;
}
