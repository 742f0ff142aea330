// The only bun:ffi declarations of moonring. The symbol table is built by parsing the C
// prototypes of zig/include/moonring.h (the one definition of the native ABI; Zig checks its
// exports against the same header at compile time), so nothing here restates a signature;
// its TypeScript types (NativeSymbols) are generated from the same header (native/abi.ts).
// Library: $MOONRING_LIB, else zig/zig-out/lib/libmoonring.so of this checkout.
import { dlopen, type FFIFunction } from "bun:ffi";
import { existsSync, readFileSync } from "node:fs";
import { statusCodes, type NativeSymbols } from "./abi";
import { headerPath, parseConstants, parsePrototypes, repoRoot, type Prototype } from "./header";

export { headerPath, parseConstants, parsePrototypes, type Prototype };
export const defaultLibraryPath = `${repoRoot}zig/zig-out/lib/libmoonring.so`;

const headerText = readFileSync(headerPath, "utf8");
export const prototypes: readonly Prototype[] = parsePrototypes(headerText);
export const constants: Readonly<Record<string, number>> = parseConstants(headerText);

/** Status code (MR_E*) -> its name without the MR_ prefix ("EPEER", ...). */
export function statusName(code: number): string {
  for (const [name, value] of Object.entries(statusCodes)) if (value === code) return name;
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
/** The native functions, named and typed as in moonring.h. */
export const native = opened.symbols as unknown as NativeSymbols;
/** Header functions the library lacks (empty for a library built from this checkout). */
export const missingSymbols: readonly string[] = opened.missing;
