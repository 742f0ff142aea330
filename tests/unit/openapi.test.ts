// /openapi.json is generated from the app's routes: every route Hono serves is in it (and nothing
// else), it is valid under openapi-spec-validator (PyPI, installed by scripts/openapi-validator.sh
// into .tools/openapi-venv), real responses match its schemas (jsonschema), bearer security
// applies everywhere but the probes, and /docs renders it as a self-contained page.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { expandedRouteDocs } from "../../src/server/api-docs";
import { docCoverage, openApiPath, servedRoutes } from "../../src/server/openapi";
import type { RankService } from "../../src/server/service";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";
const root = resolve(import.meta.dir, "../..");
const TOKEN = "openapi-test-token";
const auth = { authorization: `Bearer ${TOKEN}` };

let w: InprocWorld;
let s: RankService;
let doc: any;
let tmp: string;

/** Runs the validator script; null when it could not be installed (exit 3). */
function validatorInstalled(): boolean {
  const r = spawnSync("sh", [join(root, "scripts/openapi-validator.sh"), "--version"], { encoding: "utf8", timeout: 300_000 });
  if (r.status === 0) return true;
  console.warn(`SKIP openapi-spec-validator checks: could not install it from PyPI (exit ${r.status}): ${r.stderr.slice(-400)}`);
  return false;
}

beforeAll(async () => {
  w = await startInprocWorld(2, { token: TOKEN });
  s = w.services[0]!;
  const res = await s.app.request("/openapi.json", { headers: auth });
  expect(res.status).toBe(200);
  doc = await res.json();
  tmp = mkdtempSync(join(tmpdir(), "moonring-openapi-"));
});
afterAll(async () => {
  await w?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("openapi.json from the routes", () => {
  test("every route of the app is described, and no description lacks its route", () => {
    const cov = docCoverage(s.app.routes);
    expect(cov.undocumented).toEqual([]);
    expect(cov.stale).toEqual([]);
  });

  test("every route of the app (app.routes) is a path + method of the document, and back", () => {
    const routes = servedRoutes(s.app.routes);
    expect(routes.length).toBeGreaterThan(20);
    const expected = new Set<string>();
    for (const r of routes) {
      const { path } = openApiPath(r.path);
      const ex = expandedRouteDocs[`${r.method} ${r.path}`];
      const paths = ex ? ex.values.map((v) => path.replace(`{${ex.param}}`, v)) : [path];
      for (const p of paths) {
        expected.add(`${r.method.toLowerCase()} ${p}`);
        expect(doc.paths[p]?.[r.method.toLowerCase()]).toBeDefined();
        expect(doc.paths[p][r.method.toLowerCase()]["x-moonring-undocumented"]).toBeUndefined();
      }
    }
    const documented = Object.entries(doc.paths).flatMap(([p, ms]: [string, any]) => Object.keys(ms).map((m) => `${m} ${p}`));
    expect(documented.sort()).toEqual([...expected].sort());
    // the six /buffers routes and every collective
    for (const k of ["post /buffers", "get /buffers", "get /buffers/{id}", "put /buffers/{id}", "delete /buffers/{id}", "get /buffers/{id}/ipc", "post /collective/allreduce", "post /collective/barrier", "get /groups/{name}"]) {
      expect(expected.has(k)).toBe(true);
    }
  });

  test("templated paths declare their path parameters", () => {
    for (const [p, methods] of Object.entries(doc.paths) as [string, any][]) {
      const names = [...p.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      for (const op of Object.values(methods) as any[]) {
        const declared = (op.parameters ?? []).filter((x: any) => x.in === "path").map((x: any) => x.name);
        expect(declared.sort()).toEqual(names.sort());
      }
    }
    expect(doc.paths["/groups/{name}"].get.parameters).toEqual([{ name: "name", in: "path", required: true, description: "group name", schema: { type: "string" } }]);
  });

  test('collectives and p2p take {"buffer": id} as well as tensors', () => {
    for (const p of ["/collective/allreduce", "/collective/alltoall", "/p2p/send", "/p2p/recv"]) {
      const alts = doc.paths[p].post.requestBody.content["application/json"].schema.anyOf;
      expect(alts.some((a: any) => a.properties?.buffer?.type === "string")).toBe(true);
    }
  });

  test("bearer security applies to every operation but the probes; the probes need no token", async () => {
    expect(doc.components.securitySchemes.bearer).toEqual(expect.objectContaining({ type: "http", scheme: "bearer" }));
    expect(doc.security).toEqual([{ bearer: [] }]);
    for (const [p, methods] of Object.entries(doc.paths) as [string, any][]) {
      for (const [m, op] of Object.entries(methods) as [string, any][]) {
        if (op.security === undefined) {
          // the global requirement holds: without the token the route answers 401
          if (p.startsWith("/collective/") || p.startsWith("/internal/")) continue; // same middleware; sampled below
          const res = await s.app.request(p.replace(/\{[^}]+\}/g, "x"), { method: m.toUpperCase() });
          expect([p, res.status]).toEqual([p, 401]);
        } else {
          expect(op.security).toEqual([]);
          const res = await s.app.request(p, { method: m.toUpperCase() });
          expect([p, res.status === 401]).toEqual([p, false]);
        }
      }
    }
    const res = await s.app.request("/collective/allreduce", { method: "POST", body: "{}" });
    expect(res.status).toBe(401);
  });

  test("valid under openapi-spec-validator", () => {
    if (!validatorInstalled()) return;
    const file = join(tmp, "openapi.json");
    writeFileSync(file, JSON.stringify(doc));
    const r = spawnSync("sh", [join(root, "scripts/openapi-validator.sh"), file], { encoding: "utf8", timeout: 120_000 });
    expect(`${r.stdout}${r.stderr}`.trim()).toContain("OK");
    expect(r.status).toBe(0);
  }, 300_000);

  test("real responses match the document's schemas (named groups, buffers, collectives)", async () => {
    if (!validatorInstalled()) return;
    const call = async (path: string, method: string, body?: unknown, svc = s) => {
      const res = await svc.app.request(path, {
        method,
        headers: { ...auth, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { path, method: method.toLowerCase(), status: res.status, body: (await res.json()) as any };
    };
    const group = { name: "pair", ranks: [0, 1] };
    const defined = await Promise.all(w.services.map((x) => call("/groups", "POST", group, x)));
    const grouped = await Promise.all(
      w.services.map((x, r) => call("/collective/allreduce", "POST", { tensor: { dtype: "int32", shape: [2], data: [r, 7] }, group: "pair" }, x)),
    );
    expect(grouped[0]!.body.result.data).toEqual([1, 14]);
    expect(grouped[0]!.body.group).toEqual({ name: "pair", ranks: [0, 1] });
    const created = await call("/buffers", "POST", { dtype: "float32", shape: [3], data: [1, 2, 3] });
    const id = created.body.buffer;
    const cases = [
      ...defined,
      ...grouped,
      await call("/groups/pair", "GET"),
      await call("/groups", "GET"),
      await call("/groups/nope", "GET"),
      created,
      await call(`/buffers/${id}`, "GET"),
      await call("/buffers", "GET"),
      { ...(await call(`/buffers/${id}`, "PUT", { data: [4, 5, 6] })), path: "/buffers/{id}" },
      await call("/cluster", "GET"),
      await call("/health", "GET"),
      { ...(await call(`/buffers/${id}`, "DELETE")), path: "/buffers/{id}" },
      await call("/collective/allreduce", "POST", { tensor: { dtype: "bogus", shape: [1], data: [1] } }),
    ].map((c) => ({ ...c, path: c.path.replace(/^\/groups\/(?!$).*/, "/groups/{name}").replace(/^\/buffers\/[^/]+$/, "/buffers/{id}") }));
    expect(cases.map((c) => c.status)).toEqual([200, 200, 200, 200, 200, 200, 404, 201, 200, 200, 200, 200, 200, 200, 400]);
    const py = join(root, ".tools/openapi-venv/bin/python");
    const r = spawnSync(py, [join(root, "tests/support/validate_responses.py")], { input: JSON.stringify({ doc, cases }), encoding: "utf8", timeout: 60_000 });
    if (r.status !== 0) console.log(r.stdout, r.stderr);
    expect(r.stdout).not.toContain("FAIL");
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split("\n")).toHaveLength(cases.length);
  }, 300_000);

  test("GET /docs: the reference page lists every operation and loads nothing from elsewhere", async () => {
    expect((await s.app.request("/docs")).status).toBe(401);
    const res = await s.app.request("/docs", { headers: auth });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/html");
    const html = await res.text();
    for (const methods of Object.values(doc.paths) as any[]) {
      for (const op of Object.values(methods) as any[]) expect(html).toContain(`id="op-${op.operationId}"`);
    }
    expect(html).not.toMatch(/(src|href)\s*=\s*["']?(https?:)?\/\//i);
    expect(html).not.toMatch(/@import|url\(/i);
  });
});
