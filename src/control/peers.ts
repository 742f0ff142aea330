// HTTP to other rank services (metadata only): keep-alive fetch with the bearer token and
// typed errors relayed from the peer's JSON error body.
import { apiErrorFromJSON, PeerFailed } from "../errors";

/** 307/308 hops followed (a rank that no longer coordinates points at the one that does). */
const REDIRECTS_MAX = 3;

export class PeerClient {
  constructor(private token: string | undefined) {}

  headers(json = true): Record<string, string> {
    const h: Record<string, string> = {};
    if (json) h["content-type"] = "application/json";
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  /** POST JSON; resolves with the parsed 2xx body, throws the peer's ApiError otherwise. */
  async post<T = unknown>(url: string, body: unknown, timeoutMs: number, what: string): Promise<T> {
    let res: Response;
    try {
      res = await this.fetchFollowing(url, {
        method: "POST",
        headers: this.headers(),
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      throw new PeerFailed(`${what}: ${url} unreachable: ${(e as Error).message}`);
    }
    return this.read<T>(res, url, what);
  }

  async get<T = unknown>(url: string, timeoutMs: number, what: string): Promise<T> {
    let res: Response;
    try {
      res = await this.fetchFollowing(url, { headers: this.headers(false), signal: AbortSignal.timeout(timeoutMs) });
    } catch (e) {
      throw new PeerFailed(`${what}: ${url} unreachable: ${(e as Error).message}`);
    }
    return this.read<T>(res, url, what);
  }

  /**
   * fetch, following a rank's 307/308 to the coordinator with the same headers: fetch itself
   * drops Authorization on a redirect to another origin, so a restarted rank registering
   * through a rank that no longer coordinates was refused 401 (and crash-looped). The target
   * is a rank of the same job, which holds the same token.
   */
  private async fetchFollowing(url: string, init: RequestInit): Promise<Response> {
    let at = url;
    for (let hop = 0; ; hop++) {
      const res = await fetch(at, { ...init, redirect: "manual" });
      const to = res.headers.get("location");
      if ((res.status !== 307 && res.status !== 308) || !to || hop >= REDIRECTS_MAX) return res;
      await res.arrayBuffer().catch(() => null);
      at = new URL(to, at).href;
    }
  }

  private async read<T>(res: Response, url: string, what: string): Promise<T> {
    const text = await res.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = { error: { code: "internal", message: `${what}: non-JSON answer from ${url}: ${text.slice(0, 120)}` } };
    }
    if (res.ok) return body as T;
    throw apiErrorFromJSON(res.status, body);
  }
}
