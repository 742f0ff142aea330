// The control plane's layers point down only (docs/architecture.md "Layers"): a module may import
// from its own layer or the ones below, never from above.
import { expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const src = resolve(import.meta.dir, "../../src");
/** Lower number = lower layer. Paths relative to src/, first match wins. */
const layers: [string, number][] = [
  // native/abi.ts: constants and types generated from moonring.h, no FFI
  ["errors.ts", 0], ["limits.ts", 0], ["ops/", 0], ["util/", 0], ["native/abi.ts", 0],
  ["tensor/", 1], ["native/", 1],
  ["control/", 2],
  ["server/", 3],
  ["client/", 4], ["bench/", 4], ["cli.ts", 4], ["demo.ts", 4],
];

function layerOf(path: string): number {
  for (const [prefix, n] of layers) if (path === prefix || path.startsWith(prefix)) return n;
  throw new Error(`src/${path} is in no layer of tests/unit/layers.test.ts`);
}

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

test("src/ imports point down only", () => {
  const upward: string[] = [];
  for (const file of files(src)) {
    const from = relative(src, file);
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:from|import\()\s*["'](\.{1,2}\/[^"']+)["']/g)) {
      const abs = resolve(dirname(file), m[1]!);
      const path = existsSync(`${abs}.ts`) ? `${abs}.ts` : existsSync(join(abs, "index.ts")) ? join(abs, "index.ts") : abs;
      const target = relative(src, path);
      if (target.startsWith("..")) continue;
      if (layerOf(target) > layerOf(from)) upward.push(`${from} -> ${target}`);
    }
  }
  expect(upward).toEqual([]);
});
