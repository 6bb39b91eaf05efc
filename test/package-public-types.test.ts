/**
 * Every type a public signature names is exported (issue 5, "a real npm package"): a consumer can
 * write down the type of anything the package hands out or takes. Checked on the published
 * declarations (dist/, so private members are already gone) with the TypeScript compiler: from each
 * entry point's exports, every type reference is followed, transitively, to its declaration; a
 * declaration inside the package must itself be exported by that entry point.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import test from "ava";
import ts from "typescript";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = join(root, "dist");
const generated = join(dist, "proto", "gen");

/** Types named by the public surface of `entry` but not exported by it, as "Name (named by Owner)". */
function unexportedTypes(entry: string): string[] {
  const file = join(root, entry);
  const program = ts.createProgram([file], {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: ["node"],
    noEmit: true,
  });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  const moduleSymbol = source === undefined ? undefined : checker.getSymbolAtLocation(source);
  if (moduleSymbol === undefined) throw new Error(`${entry} is not a module`);
  const target = (symbol: ts.Symbol): ts.Symbol =>
    symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;

  const exported = new Set<ts.Symbol>();
  const addExports = (symbols: readonly ts.Symbol[]): void => {
    for (const symbol of symbols.map(target)) {
      if (exported.has(symbol)) continue;
      exported.add(symbol);
      // `export * as ns from ...`: what the namespace exports is reachable as `ns.Name`.
      if (symbol.flags & ts.SymbolFlags.ValueModule) addExports(checker.getExportsOfModule(symbol));
    }
  };
  addExports(checker.getExportsOfModule(moduleSymbol));

  const inPackage = (declaration: ts.Declaration): boolean =>
    declaration.getSourceFile().fileName.startsWith(dist);
  /** A helper ts-proto declares without exporting (Builtin, KeysOfUnion): nobody can export it. */
  const isGeneratedInternal = (declaration: ts.Declaration): boolean =>
    declaration.getSourceFile().fileName.startsWith(generated) &&
    !(ts.getCombinedModifierFlags(declaration) & ts.ModifierFlags.Export);

  const visited = new Set<ts.Symbol>();
  const missing = new Map<string, string>();
  const visitSymbol = (found: ts.Symbol, owner: string): void => {
    const symbol = target(found);
    if (visited.has(symbol) || symbol.flags & ts.SymbolFlags.TypeParameter) return;
    visited.add(symbol);
    const declarations = (symbol.declarations ?? []).filter(inPackage);
    if (declarations.length === 0 || declarations.every(isGeneratedInternal)) return;
    if (!exported.has(symbol)) missing.set(symbol.getName(), owner);
    for (const declaration of declarations) walk(declaration, symbol.getName());
  };
  const walk = (node: ts.Node, owner: string): void => {
    let name: ts.EntityName | ts.Expression | undefined;
    if (ts.isTypeReferenceNode(node)) name = node.typeName;
    else if (ts.isTypeQueryNode(node)) name = node.exprName;
    else if (ts.isExpressionWithTypeArguments(node)) name = node.expression;
    if (name !== undefined) {
      const symbol = checker.getSymbolAtLocation(ts.isQualifiedName(name) ? name.right : name);
      if (symbol !== undefined) visitSymbol(symbol, owner);
    }
    ts.forEachChild(node, (child) => walk(child, owner));
  };
  for (const symbol of checker.getExportsOfModule(moduleSymbol).map(target)) {
    visited.add(symbol);
    for (const declaration of (symbol.declarations ?? []).filter(inPackage))
      walk(declaration, symbol.getName());
  }
  return [...missing].map(([name, owner]) => `${name} (named by ${owner})`).sort();
}

test("every type the client entry's public signatures name is exported from leasehold", (t) => {
  t.deepEqual(unexportedTypes("dist/client/index.d.ts"), []);
});

test("every type the registry entry's public signatures name is exported from leasehold/registry", (t) => {
  t.deepEqual(unexportedTypes("dist/registry/index.d.ts"), []);
});
