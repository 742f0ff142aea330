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

// Routes see the rank service through narrow views (server/routes/facade.ts), never the whole
// RankService: each route module's registration takes one view, and nothing in routes/ (or the
// dashboard's state, which a route hands its view to) imports server/service.ts.
test("route modules take a narrow view of the service, never RankService", () => {
  const routes = join(src, "server/routes");
  const facade = readFileSync(join(routes, "facade.ts"), "utf8");
  const views = new Set([...facade.matchAll(/export (?:interface|type) (\w+Facade)\b/g)].map((m) => m[1]!));
  expect(views.size).toBeGreaterThanOrEqual(8);
  expect(facade).not.toMatch(/from\s+["']\.\.\/service["']/);
  const offences: string[] = [];
  let registrations = 0;
  const modules = readdirSync(routes).filter((f) => f.endsWith(".ts") && f !== "facade.ts");
  for (const f of [...modules.map((m) => join(routes, m)), join(src, "server/dashboard/state.ts")]) {
    const name = relative(src, f);
    const text = readFileSync(f, "utf8");
    if (/from\s+["']\.\.\/service["']/.test(text)) offences.push(`${name} imports server/service.ts`);
    if (/\bRankService\b/.test(text)) offences.push(`${name} names RankService`);
    for (const m of text.matchAll(/export function (\w+Routes)\(app: Hono, svc: (\w+)\)/g)) {
      registrations++;
      if (!views.has(m[2]!)) offences.push(`${name}: ${m[1]} takes ${m[2]}, not a view of routes/facade.ts`);
    }
  }
  expect(offences).toEqual([]);
  expect(registrations).toBe(modules.length); // every route module registers through a view
});
