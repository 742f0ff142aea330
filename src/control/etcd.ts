// A small etcd v3 client over etcd's JSON gateway (etcd >= 3.4 serves the v3 API as JSON over
// HTTP: POST /v3/kv/range, /v3/kv/txn, /v3/lease/grant, /v3/watch, ...; keys and values in
// base64, int64s as decimal strings). No npm package: fetch is enough.
//
// Every request goes to the preferred endpoint and, when that one fails (refused, timed out,
// "no leader", "leader changed"), to the next of the list, round after round until the call's
// deadline: a killed etcd member costs one failed attempt, not the job.
import { sleep } from "../util/net";

/** One request to one endpoint: a member that does not answer within this is skipped. */
export const ETCD_REQUEST_TIMEOUT_MS = 1000;
/** How long a call keeps trying the endpoints (rounds) before it fails. */
export const ETCD_CALL_DEADLINE_MS = 8000;
/** Pause between two rounds over every endpoint. */
const ROUND_PAUSE_MS = 100;
/** gRPC codes worth another endpoint: UNAVAILABLE (no leader, leader changed), DEADLINE_EXCEEDED, UNKNOWN. */
const RETRYABLE_CODES = new Set([14, 4, 2]);

/** etcd refused the request (its answer, not a transport failure): e.g. "requested lease not found". */
export class EtcdError extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
    this.name = "EtcdError";
  }
}

/** No endpoint of the list answered within the call's deadline. */
export class EtcdUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EtcdUnavailable";
  }
}

export interface KeyValue {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  lease: string;
}

/** A txn comparison (etcd's Compare): all of a txn's comparisons must hold for its success ops. */
export type Compare =
  | { key: string; target: "CREATE"; createRevision: number }
  | { key: string; target: "MOD"; modRevision: number }
  | { key: string; target: "VALUE"; value: string };

export type TxnOp = { put: { key: string; value: string; lease?: string } } | { range: { key: string } } | { del: { key: string } };

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
const unb64 = (s: string | undefined) => (s ? Buffer.from(s, "base64").toString("utf8") : "");

function toKv(raw: Record<string, string>): KeyValue {
  return {
    key: unb64(raw.key),
    value: unb64(raw.value),
    createRevision: Number(raw.create_revision ?? 0),
    modRevision: Number(raw.mod_revision ?? 0),
    lease: raw.lease ?? "0",
  };
}

function compareJSON(c: Compare): Record<string, string> {
  const key = b64(c.key);
  if (c.target === "CREATE") return { key, target: "CREATE", result: "EQUAL", create_revision: String(c.createRevision) };
  if (c.target === "MOD") return { key, target: "MOD", result: "EQUAL", mod_revision: String(c.modRevision) };
  return { key, target: "VALUE", result: "EQUAL", value: b64(c.value) };
}

function opJSON(op: TxnOp): Record<string, unknown> {
  if ("put" in op) return { request_put: { key: b64(op.put.key), value: b64(op.put.value), ...(op.put.lease ? { lease: op.put.lease } : {}) } };
  if ("range" in op) return { request_range: { key: b64(op.range.key) } };
  return { request_delete_range: { key: b64(op.del.key) } };
}

/** Parses `etcd://host:port[,host:port...][/job]` into gateway base URLs and the job name ("" if none). */
export function parseEtcdUrl(spec: string): { endpoints: string[]; job: string } {
  const m = /^etcd:\/\/([^/]*)(?:\/(.*))?$/.exec(spec);
  if (!m) throw new Error(`expected etcd://HOST:PORT[,HOST:PORT...][/JOB], got ${JSON.stringify(spec)}`);
  const hosts = m[1]!.split(",").filter((h) => h.length > 0);
  if (hosts.length === 0) throw new Error(`no etcd endpoint in ${JSON.stringify(spec)} (expected etcd://HOST:PORT[,HOST:PORT...])`);
  const endpoints = hosts.map((h) => {
    const hp = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+)(?::(\d+))?$/.exec(h);
    const port = hp?.[2] === undefined ? 2379 : Number(hp[2]);
    if (!hp || !(port > 0 && port < 65536)) throw new Error(`bad etcd endpoint ${JSON.stringify(h)} in ${JSON.stringify(spec)} (expected HOST:PORT)`);
    return `http://${hp[1]}:${port}`;
  });
  const job = m[2] ?? "";
  if (!/^[A-Za-z0-9._-]*$/.test(job)) throw new Error(`bad job name ${JSON.stringify(job)} in ${JSON.stringify(spec)} (letters, digits, . _ -)`);
  return { endpoints, job };
}

export class EtcdClient {
  private preferred = 0;

  constructor(
    readonly endpoints: string[],
    private readonly requestTimeoutMs = ETCD_REQUEST_TIMEOUT_MS,
  ) {
    if (endpoints.length === 0) throw new Error("etcd: no endpoints");
  }

  /** POSTs `body` to `path`, endpoint after endpoint, until one answers or `deadlineMs` passed. */
  async call<T = Record<string, any>>(path: string, body: unknown, deadlineMs = ETCD_CALL_DEADLINE_MS): Promise<T> {
    const until = performance.now() + deadlineMs;
    const lastError = new Map<string, string>();
    for (;;) {
      for (let i = 0; i < this.endpoints.length; i++) {
        const ep = this.endpoints[(this.preferred + i) % this.endpoints.length]!;
        try {
          const res = await this.once(ep, path, body);
          this.preferred = this.endpoints.indexOf(ep);
          return res as T;
        } catch (e) {
          if (e instanceof EtcdError) throw e;
          lastError.set(ep, (e as Error).message);
        }
        if (performance.now() > until) break;
      }
      if (performance.now() + ROUND_PAUSE_MS > until) {
        const detail = [...lastError].map(([ep, m]) => `${ep}: ${m}`).join("; ");
        throw new EtcdUnavailable(`etcd: no endpoint answered ${path} within ${Math.round(deadlineMs / 1000)} s (${detail})`);
      }
      await sleep(ROUND_PAUSE_MS);
    }
  }

  private async once(ep: string, path: string, body: unknown): Promise<Record<string, any>> {
    let res: Response;
    try {
      res = await fetch(ep + path, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(this.requestTimeoutMs) });
    } catch (e) {
      const err = e as Error & { code?: string };
      throw new Error(err.name === "TimeoutError" ? `no answer within ${this.requestTimeoutMs} ms` : (err.code ?? err.message));
    }
    const text = await res.text();
    let json: Record<string, any>;
    try {
      // streaming endpoints (lease keepalive) answer one JSON object per line; the first is the answer
      json = JSON.parse(text.split("\n")[0]!);
    } catch {
      throw new Error(`not an etcd v3 JSON gateway (HTTP ${res.status}: ${JSON.stringify(text.slice(0, 80))})`);
    }
    if (json.result && typeof json.result === "object") json = json.result;
    if (typeof json.error === "string" || (res.status !== 200 && typeof json.code === "number")) {
      const code = Number(json.code ?? 2);
      const message = String(json.message ?? json.error);
      if (RETRYABLE_CODES.has(code)) throw new Error(message);
      throw new EtcdError(`etcd ${path}: ${message}`, code);
    }
    if (res.status !== 200 || typeof json.header !== "object") {
      throw new Error(`not an etcd v3 JSON gateway (HTTP ${res.status}: ${JSON.stringify(text.slice(0, 80))})`);
    }
    return json;
  }

  /** The key's current value and the store's revision (null if absent). */
  async get(key: string): Promise<{ kv: KeyValue | null; revision: number }> {
    const r = await this.call("/v3/kv/range", { key: b64(key) });
    const raw = (r.kvs as Record<string, string>[] | undefined)?.[0];
    return { kv: raw ? toKv(raw) : null, revision: Number(r.header.revision ?? 0) };
  }

  async put(key: string, value: string, lease?: string): Promise<void> {
    await this.call("/v3/kv/put", { key: b64(key), value: b64(value), ...(lease ? { lease } : {}) });
  }

  async del(key: string): Promise<void> {
    await this.call("/v3/kv/deleterange", { key: b64(key) });
  }

  /** A transaction: `success` runs if every comparison holds, else `failure`; their ranges are returned. */
  async txn(compare: Compare[], success: TxnOp[], failure: TxnOp[] = []): Promise<{ succeeded: boolean; ranges: (KeyValue | null)[] }> {
    const r = await this.call("/v3/kv/txn", { compare: compare.map(compareJSON), success: success.map(opJSON), failure: failure.map(opJSON) });
    const ranges = ((r.responses as Record<string, any>[] | undefined) ?? [])
      .filter((x) => x.response_range)
      .map((x) => {
        const raw = (x.response_range.kvs as Record<string, string>[] | undefined)?.[0];
        return raw ? toKv(raw) : null;
      });
    return { succeeded: r.succeeded === true, ranges };
  }

  async leaseGrant(ttlS: number, deadlineMs?: number): Promise<string> {
    const r = await this.call("/v3/lease/grant", { TTL: String(ttlS) }, deadlineMs);
    return String(r.ID);
  }

  /** Renews a lease; returns its TTL in seconds (0: the lease is gone). */
  async leaseKeepAlive(id: string): Promise<number> {
    const r = await this.call("/v3/lease/keepalive", { ID: id });
    return Number(r.TTL ?? 0);
  }

  async leaseRevoke(id: string, deadlineMs?: number): Promise<void> {
    await this.call("/v3/lease/revoke", { ID: id }, deadlineMs).catch((e) => {
      if (!(e instanceof EtcdError)) throw e; // a lease already gone is revoked
    });
  }

  /**
   * Watches `key` from `fromRevision` until its first change or `timeoutMs` (a watch stream on
   * the preferred endpoint). Resolves true on a change, false on the timeout; a broken stream
   * (its member died) moves the preferred endpoint on and resolves false.
   */
  async watchChange(key: string, fromRevision: number, timeoutMs: number): Promise<boolean> {
    const ep = this.endpoints[this.preferred]!;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    try {
      const res = await fetch(`${ep}/v3/watch`, {
        method: "POST",
        body: JSON.stringify({ create_request: { key: b64(key), start_revision: String(fromRevision) } }),
        signal: abort.signal,
      });
      if (!res.ok || !res.body) throw new Error(`watch: HTTP ${res.status}`);
      const decoder = new TextDecoder();
      let buffered = "";
      for await (const chunk of res.body) {
        buffered += decoder.decode(chunk, { stream: true });
        for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          const msg = JSON.parse(line) as { result?: { events?: unknown[]; canceled?: boolean }; error?: unknown };
          if (msg.error || msg.result?.canceled) throw new Error(`watch: ${JSON.stringify(msg).slice(0, 120)}`);
          if ((msg.result?.events?.length ?? 0) > 0) return true;
        }
        if (buffered.length > 1 << 20) throw new Error("watch: a line over 1 MiB");
      }
      throw new Error("watch: stream ended");
    } catch (e) {
      if (abort.signal.aborted) return false;
      this.preferred = (this.preferred + 1) % this.endpoints.length;
      await sleep(ROUND_PAUSE_MS);
      return false;
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }
}
