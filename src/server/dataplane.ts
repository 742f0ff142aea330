// Opens this rank's data plane: src/native/engine.ts (bun:ffi over libmoonring). The import
// is dynamic so the control plane (and `--help`) loads even when the native side is missing,
// and a clear error says what is missing.
import type { DataPlane, DataPlaneOptions } from "../native/types";

export type DataPlaneFactory = (opts: DataPlaneOptions) => DataPlane | Promise<DataPlane>;

export class DataPlaneUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataPlaneUnavailable";
  }
}

type AnyCtor = new (opts: DataPlaneOptions) => DataPlane;
type AnyFn = (opts: DataPlaneOptions) => DataPlane | Promise<DataPlane>;

/** The factory src/native/engine.ts provides (a createDataPlane-style function or a DataPlane class). */
export async function nativeDataPlaneFactory(): Promise<DataPlaneFactory> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(new URL("../native/engine.ts", import.meta.url).href)) as Record<string, unknown>;
  } catch (e) {
    throw new DataPlaneUnavailable(
      `the native data plane is not available: importing src/native/engine.ts failed: ${(e as Error).message}`,
    );
  }
  for (const name of ["createDataPlane", "openDataPlane", "createEngine", "openEngine"]) {
    const f = mod[name];
    if (typeof f === "function") return (opts) => (f as AnyFn)(opts);
  }
  for (const name of ["NativeDataPlane", "NativeEngine", "Engine", "DataPlane", "MoonringEngine", "default"]) {
    const C = mod[name];
    if (typeof C === "function" && (C as { prototype?: { run?: unknown } }).prototype?.run) {
      const Ctor = C as AnyCtor;
      const open = (Ctor as unknown as { open?: AnyFn; create?: AnyFn }).open ?? (Ctor as unknown as { create?: AnyFn }).create;
      if (typeof open === "function") return (opts) => open.call(Ctor, opts);
      return (opts) => new Ctor(opts);
    }
  }
  throw new DataPlaneUnavailable(
    `src/native/engine.ts exports no data plane factory (expected createDataPlane(opts) or a class implementing DataPlane); exports: ${Object.keys(mod).join(", ")}`,
  );
}
