// zig/include/moonring.h read as data: its mr_* prototypes (ffi.ts opens the library with them)
// and its #define constants, and the generator of native/abi.ts (the typed symbol table and
// the constants as TypeScript). Opens no library.
//   bun src/native/header.ts --write    regenerate src/native/abi.ts (tests/unit/abi.test.ts
//                                        fails while it is stale)
import { FFIType } from "bun:ffi";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
export const headerPath = `${repoRoot}zig/include/moonring.h`;
export const abiModulePath = `${repoRoot}src/native/abi.ts`;

export interface Prototype {
  name: string;
  returns: FFIType;
  args: FFIType[];
  /** Parameter names, as in the header. */
  argNames: string[];
  /** The C text of the declaration, for messages. */
  c: string;
}

const scalarTypes: Record<string, FFIType> = {
  void: FFIType.void,
  uint8_t: FFIType.u8,
  int8_t: FFIType.i8,
  uint16_t: FFIType.u16,
  int16_t: FFIType.i16,
  uint32_t: FFIType.u32,
  int32_t: FFIType.i32,
  uint64_t: FFIType.u64,
  int64_t: FFIType.i64,
  size_t: FFIType.u64,
  int: FFIType.i32,
};

/** Maps one C type (parameter or return, name removed) to its bun:ffi type. */
function ffiType(cType: string, where: string): FFIType {
  const t = cType.replace(/\bconst\b/g, " ").replace(/\s+/g, " ").trim();
  if (t.includes("*")) return FFIType.ptr;
  const mapped = scalarTypes[t];
  if (mapped === undefined) throw new Error(`moonring.h: no bun:ffi mapping for C type '${t}' in ${where}`);
  return mapped;
}

/** Splits "const uint8_t *buf" into its type ("const uint8_t *") and name ("buf"). */
function splitParam(param: string, where: string): { type: string; name: string } {
  const m = /^(.*?)([A-Za-z_]\w*)\s*$/.exec(param.trim());
  if (!m || m[1]!.trim() === "") throw new Error(`moonring.h: cannot parse parameter '${param}' of ${where}`);
  return { type: m[1]!, name: m[2]! };
}

/** Every `mr_*` function prototype of a C header's text. */
export function parsePrototypes(headerText: string): Prototype[] {
  const text = headerText
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/\/\/[^\n]*/g, " ")
    .replace(/^\s*#[^\n]*$/gm, " ");
  const prototypes: Prototype[] = [];
  const re = /([A-Za-z_][\w\s]*?[\s*]+)(mr_\w+)\s*\(([^()]*)\)\s*;/g;
  for (const m of text.matchAll(re)) {
    const name = m[2]!;
    const c = m[0].replace(/\s+/g, " ").trim();
    const text = m[3]!.trim();
    const params = text === "" || text === "void" ? [] : text.split(",").map((p) => splitParam(p, name));
    prototypes.push({ name, returns: ffiType(m[1]!, name), args: params.map((p) => ffiType(p.type, name)), argNames: params.map((p) => p.name), c });
  }
  return prototypes;
}

/** `#define MR_X <int>` constants (status codes, limits). */
export function parseConstants(headerText: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of headerText.matchAll(/^\s*#define\s+(MR_\w+)\s+(-?\d+)/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

/** The TypeScript type of a bun:ffi argument / return value. */
function tsType(t: FFIType, as: "arg" | "return"): string {
  if (t === FFIType.ptr) return as === "arg" ? "number | ArrayBufferView | null" : "Pointer | null";
  if (t === FFIType.u64 || t === FFIType.i64) return "number | bigint";
  if (t === FFIType.void) return "void";
  return "number";
}

/** The text of src/native/abi.ts for a header's text. */
export function generateAbiModule(headerText: string): string {
  const constants = parseConstants(headerText);
  const lines = [
    "// Generated from zig/include/moonring.h by src/native/header.ts (bun src/native/header.ts --write).",
    "// Do not edit: tests/unit/abi.test.ts fails when this file and the header differ.",
    'import type { Pointer } from "bun:ffi";',
    "",
  ];
  for (const [name, value] of Object.entries(constants)) lines.push(`export const ${name} = ${value};`);
  const statuses = Object.entries(constants).filter(([name]) => /^MR_E[A-Z]+$/.test(name));
  lines.push("", "/** The MR_E* status codes by name without the MR_ prefix. */", "export const statusCodes = {");
  for (const [name, value] of statuses) lines.push(`  ${name.slice(3)}: ${value},`);
  lines.push("} as const;", "export type StatusName = keyof typeof statusCodes;", "");
  lines.push("/** The library's functions, typed from their C prototypes. */", "export interface NativeSymbols {");
  for (const p of parsePrototypes(headerText)) {
    const args = p.args.map((a, i) => `${p.argNames[i]}: ${tsType(a, "arg")}`).join(", ");
    lines.push(`  /** ${p.c} */`, `  ${p.name}(${args}): ${tsType(p.returns, "return")};`);
  }
  lines.push("}", "");
  return lines.join("\n");
}

if (import.meta.main && process.argv.includes("--write")) {
  writeFileSync(abiModulePath, generateAbiModule(readFileSync(headerPath, "utf8")));
  console.log(`wrote ${abiModulePath}`);
}
