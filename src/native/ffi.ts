// The only bun:ffi declarations of moonring. The symbol table is built by parsing the C
// prototypes of zig/include/moonring.h (the one definition of the native ABI; Zig checks its
// exports against the same header at compile time), so nothing here restates a signature.
// Library: $MOONRING_LIB, else zig/zig-out/lib/libmoonring.so of this checkout.
import { dlopen, FFIType, type FFIFunction } from "bun:ffi";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
export const headerPath = `${repoRoot}zig/include/moonring.h`;
export const defaultLibraryPath = `${repoRoot}zig/zig-out/lib/libmoonring.so`;

export interface Prototype {
  name: string;
  returns: FFIType;
  args: FFIType[];
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

/** Splits "const uint8_t *buf" into its type ("const uint8_t *"). */
function paramType(param: string, where: string): string {
  const m = /^(.*?)([A-Za-z_]\w*)\s*$/.exec(param.trim());
  if (!m || m[1]!.trim() === "") throw new Error(`moonring.h: cannot parse parameter '${param}' of ${where}`);
  return m[1]!;
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
    const params = m[3]!.trim();
    const args =
      params === "" || params === "void"
        ? []
        : params.split(",").map((p) => ffiType(paramType(p, name), name));
    prototypes.push({ name, returns: ffiType(m[1]!, name), args, c });
  }
  return prototypes;
}

/** `#define MR_X <int>` constants (status codes). */
export function parseConstants(headerText: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of headerText.matchAll(/^\s*#define\s+(MR_\w+)\s+(-?\d+)/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

const headerText = readFileSync(headerPath, "utf8");
export const prototypes: readonly Prototype[] = parsePrototypes(headerText);
export const constants: Readonly<Record<string, number>> = parseConstants(headerText);

/** Status code (MR_E*) -> its name without the MR_ prefix ("EPEER", ...). */
export function statusName(code: number): string {
  for (const [name, value] of Object.entries(constants)) if (value === code && name !== "MR_OK") return name.slice(3);
  return code === 0 ? "OK" : `E${code}`;
}

export const libraryPath = process.env.MOONRING_LIB || defaultLibraryPath;

type Symbols = Record<string, (...args: any[]) => any>;

function definitions(protos: readonly Prototype[]): Record<string, FFIFunction> {
  const defs: Record<string, FFIFunction> = {};
  for (const p of protos) defs[p.name] = { args: p.args, returns: p.returns };
  return defs;
}

function open(): { symbols: Symbols; missing: string[] } {
  if (!existsSync(libraryPath)) {
    throw new Error(
      `libmoonring not found at ${libraryPath}: build it (cd zig && ../.tools/bin/zig build) or set MOONRING_LIB`,
    );
  }
  try {
    return { symbols: dlopen(libraryPath, definitions(prototypes)).symbols as Symbols, missing: [] };
  } catch (e) {
    // A library older than the header: open what it has; the rest throw when called.
    const present = prototypes.filter((p) => {
      try {
        dlopen(libraryPath, definitions([p])).close();
        return true;
      } catch {
        return false;
      }
    });
    if (present.length === 0) throw e;
    const missing = prototypes.filter((p) => !present.includes(p)).map((p) => p.name);
    const symbols = { ...(dlopen(libraryPath, definitions(present)).symbols as Symbols) };
    for (const name of missing) {
      symbols[name] = () => {
        throw new Error(`${libraryPath} does not export ${name} (declared in moonring.h): rebuild the library`);
      };
    }
    return { symbols, missing };
  }
}

const opened = open();
/** The native functions, named as in moonring.h. */
export const native: Symbols = opened.symbols;
/** Header functions the library lacks (empty for a library built from this checkout). */
export const missingSymbols: readonly string[] = opened.missing;
