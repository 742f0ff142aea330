// /openapi.json, generated from the app's routes: every route Hono serves (app.routes) becomes a
// path + operation, described by api-docs.ts; schemas come from zod (z.toJSONSchema).
import { z } from "zod";
import { expandedRouteDocs, routeDocs, type ResponseDoc, type RouteDoc } from "./api-docs";
import { errorSchema } from "./schemas";

/** What openapi.ts needs of a Hono route (app.routes entries have more). */
export interface RouteInfo {
  method: string;
  path: string;
}

const ERROR_TEXT: Record<string, string> = {
  "400": "invalid_request: malformed JSON, unknown dtype/op, data length != product(shape), root out of range, list of wrong length, avg on integers, bitwise op on floats",
  "401": "unauthorized: MOONRING_TOKEN is set and the bearer token is missing or wrong",
  "404": "not_found: no such object (buffer, group), or this rank does not serve the route (rendezvous on ranks != 0)",
  "409": "collective_mismatch / conflict: ranks made different calls at the same point (details.calls), or a conflicting definition",
  "413": "too_large: body or tensor over the configured limit",
  "429": "too_many_requests: this rank holds --max-pending-calls calls already; retry once some finish",
  "499": "cancelled: the client disconnected before every member joined; the call was withdrawn",
  "503": "not_ready: before rendezvous completes, or this rank is awaiting / failed / left; peer_failed: a peer the call needed failed; master_lost: no coordinator can be reached and none took over",
  "504": "timeout: not every rank arrived within timeout_ms; details.missing_ranks",
};

class SchemaSink {
  readonly components: Record<string, unknown> = {};

  /** JSON Schema of a zod schema; shared ones (meta id) land in components.schemas. */
  of(schema: z.ZodType, io: "input" | "output"): Record<string, unknown> {
    const out = z.toJSONSchema(schema, { io, unrepresentable: "any", target: "draft-2020-12" }) as Record<string, unknown>;
    delete out.$schema;
    const defs = out.$defs as Record<string, Record<string, unknown>> | undefined;
    delete out.$defs;
    for (const [name, def] of Object.entries(defs ?? {})) {
      delete def.id;
      this.components[name] = rewriteRefs(def);
    }
    const id = out.id;
    delete out.id;
    // A top-level schema with an id is itself shared: store it and refer to it.
    if (typeof id === "string") {
      this.components[id] = rewriteRefs(out);
      return { $ref: `#/components/schemas/${id}` };
    }
    return rewriteRefs(out);
  }
}

function rewriteRefs<T>(v: T): T {
  if (Array.isArray(v)) return v.map(rewriteRefs) as T;
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      o[k] = k === "$ref" && typeof x === "string" ? x.replace("#/$defs/", "#/components/schemas/") : rewriteRefs(x);
    }
    return o as T;
  }
  return v;
}

/** "/buffers/:id/ipc" -> "/buffers/{id}/ipc" and its parameter names. */
export function openApiPath(honoPath: string): { path: string; params: string[] } {
  const params: string[] = [];
  const path = honoPath.replace(/:([A-Za-z_][A-Za-z0-9_]*)(\{[^}]*\})?\??/g, (_, name: string) => {
    params.push(name);
    return `{${name}}`;
  });
  return { path, params };
}

function response(sink: SchemaSink, r: ResponseDoc): Record<string, unknown> {
  const content: Record<string, unknown> = {};
  if (r.contentType) content[r.contentType] = { schema: { type: "string" } };
  else if (r.schema) content["application/json"] = { schema: sink.of(r.schema, "output") };
  if (r.octet) content["application/octet-stream"] = { schema: { type: "string", format: "binary" } };
  return Object.keys(content).length ? { description: r.description, content } : { description: r.description };
}

function operation(sink: SchemaSink, doc: RouteDoc, pathParams: string[], fixed: Record<string, string>): Record<string, unknown> {
  const parameters: unknown[] = [];
  for (const name of pathParams) {
    if (name in fixed) continue;
    parameters.push({ name, in: "path", required: true, description: doc.params?.[name] ?? name, schema: { type: "string" } });
  }
  for (const [name, q] of Object.entries(doc.query ?? {})) {
    parameters.push({ name, in: "query", required: false, description: q.description, schema: q.schema });
  }
  const responses: Record<string, unknown> = {};
  for (const [status, r] of Object.entries(doc.responses)) responses[status] = response(sink, r);
  for (const status of doc.errors ?? []) {
    if (responses[status]) continue;
    responses[status] = { description: ERROR_TEXT[status] ?? "error", content: { "application/json": { schema: sink.of(errorSchema, "output") } } };
  }
  const op: Record<string, unknown> = { operationId: doc.operationId, summary: doc.summary, tags: [doc.tag] };
  if (doc.description) op.description = doc.description;
  if (parameters.length) op.parameters = parameters;
  if (doc.body) {
    const content: Record<string, unknown> = { "application/json": { schema: sink.of(doc.body.schema, "input") } };
    if (doc.body.octet) content["application/octet-stream"] = { schema: { type: "string", format: "binary", description: doc.body.octet } };
    op.requestBody = { required: !doc.body.optional, content };
  }
  op.responses = responses;
  if (doc.public) op.security = [];
  return op;
}

function undocumented(method: string, path: string): RouteDoc {
  return {
    operationId: `${method.toLowerCase()}_${path.replace(/[^A-Za-z0-9]+/g, "_").replace(/^_|_$/g, "")}`,
    tag: "internal",
    summary: `${method} ${path} (not described in src/server/api-docs.ts)`,
    responses: { "200": { description: "see the route's source" } },
  };
}

/** The app's routes that answer requests (middleware registered with app.use is left out). */
export function servedRoutes(routes: readonly RouteInfo[]): RouteInfo[] {
  const seen = new Set<string>();
  const out: RouteInfo[] = [];
  for (const r of routes) {
    if (r.method === "ALL" && (r.path === "*" || r.path === "/*")) continue;
    const key = `${r.method} ${r.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ method: r.method, path: r.path });
  }
  return out;
}

export function buildOpenApi(routes: readonly RouteInfo[]): Record<string, unknown> {
  const sink = new SchemaSink();
  const paths: Record<string, Record<string, unknown>> = {};
  const add = (path: string, method: string, op: Record<string, unknown>) => {
    (paths[path] ??= {})[method.toLowerCase()] = op;
  };
  for (const r of servedRoutes(routes)) {
    const key = `${r.method} ${r.path}`;
    const { path, params } = openApiPath(r.path);
    const expanded = expandedRouteDocs[key];
    if (expanded) {
      for (const value of expanded.values) {
        add(path.replace(`{${expanded.param}}`, value), r.method, operation(sink, expanded.doc(value), params, { [expanded.param]: value }));
      }
      continue;
    }
    const doc = routeDocs[key];
    const op = operation(sink, doc ?? undocumented(r.method, r.path), params, {});
    if (!doc) op["x-moonring-undocumented"] = true;
    add(path, r.method, op);
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "moonring rank service",
      version: "1",
      description:
        "Collective communication as a service: every rank of a job runs this service; a program calls its local rank. " +
        "Contract: docs/api-contract.md; extensions: docs/api-extensions.md. With MOONRING_TOKEN set, every route but the probes needs the bearer token.",
    },
    servers: [{ url: "/", description: "this rank" }],
    tags: [
      { name: "collectives", description: "every rank of a group makes the same call" },
      { name: "p2p", description: "point to point" },
      { name: "buffers", description: "tensors that stay on the rank (docs/api-extensions.md, Device buffers)" },
      { name: "membership", description: "elastic membership and named groups" },
      { name: "operations", description: "probes, metrics, introspection" },
      { name: "internal", description: "rank service to rank service (not for programs)" },
    ],
    security: [{ bearer: [] }],
    components: {
      schemas: sink.components,
      securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "MOONRING_TOKEN; required on every route but the probes when set" } },
    },
    paths,
  };
}

/** Routes of the app that api-docs.ts does not describe, and descriptions of routes the app lacks. */
export function docCoverage(routes: readonly RouteInfo[]): { undocumented: string[]; stale: string[] } {
  const served = new Set(servedRoutes(routes).map((r) => `${r.method} ${r.path}`));
  const described = new Set([...Object.keys(routeDocs), ...Object.keys(expandedRouteDocs)]);
  return {
    undocumented: [...served].filter((k) => !described.has(k)),
    stale: [...described].filter((k) => !served.has(k)),
  };
}
