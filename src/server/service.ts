// One rank service: HTTP server (Hono on Bun.serve), data plane, rendezvous, agreement.
// `serve` builds one of these; tests build several in one process with a fake data plane.
import { rmSync } from "node:fs";
import type { Server } from "bun";
import { hostname } from "node:os";
import { Agreement } from "../control/agreement";
import { CollectiveRunner } from "../control/collective";
import { Coordinator, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS } from "../control/coordinator";
import { CoordinatorHub, type LinkData } from "../control/hub";
import { CoordinatorLink } from "../control/link";
import { Liveness } from "../control/liveness";
import { Matcher } from "../control/matcher";
import { Membership, type MembershipView, type RankState } from "../control/membership";
import { P2P } from "../control/p2p";
import { Participant, type CoordinatorChannel } from "../control/participant";
import { PeerClient } from "../control/peers";
import { RendezvousClient, RendezvousServer } from "../control/rendezvous";
import { Sequencer } from "../control/sequencer";
import type { DataPlane, DataPlaneLinks } from "../native/types";
import { apiErrorFromJSON, MasterLost, NotReady, type ApiError, TooManyRequests } from "../errors";
import { authorize, expectedBearer } from "./auth";
import { Logger } from "../util/log";
import { localRankOf, type LocalRank } from "../util/local-rank";
import { Metrics } from "../util/metrics";
import { httpUrl } from "../util/net";
import { createApp, errorResponse } from "./app";
import { isOctetStream } from "./body";
import { handleCollective } from "./routes/collective";
import { nativeDataPlaneFactory, type DataPlaneFactory } from "./dataplane";

export interface ServiceConfig {
  rank: number;
  /** Initial world size N (ranks 0..N-1 rendezvous). */
  worldSize: number;
  /** Slots (launch --max-world-size); >= worldSize. */
  worldSizeMax: number;
  masterHost: string;
  masterPort: number;
  /** HTTP bind host and port. */
  host: string;
  port: number;
  /** Address other ranks use to reach this one (default: host, or the hostname for 0.0.0.0/::). */
  advertiseHost?: string;
  dataPort?: number;
  token?: string;
  device: "cpu" | "cuda";
  join: boolean;
  maxBodyBytes: number;
  maxTensorBytes: number;
  /** Calls (collectives, p2p) this rank holds at once; one more is 429 (default 1024). */
  maxPendingCalls?: number;
  clusterId?: string;
  rendezvousTimeoutMs: number;
  /** Control-plane heartbeat (rank <-> rank 0): interval and silence that counts as a failure. */
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  /** Also serve the API on this Unix-domain socket path (serve --unix). */
  unixPath?: string;
  /** Group (gid) that may map this rank's shared host buffers too (mode 0660); default: owner only. */
  shmGroup?: number | null;
  /** LOCAL_RANK / LOCAL_WORLD_SIZE as serve read them (default: the global rank, no env). */
  localRank?: LocalRank;
  /** Heartbeats from a Worker over UDP (control/liveness.ts; default on). In-process test worlds of many ranks turn it off. */
  heartbeatThread?: boolean;
  /** Whether a restart of this rank rejoins by itself (default "manual"; docs/api-extensions.md "Rejoin"). */
  rejoin?: "auto" | "manual";
  /** Tests inject a fake; the real service uses src/native/engine.ts. */
  dataPlaneFactory?: DataPlaneFactory;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_MAX_TENSOR_BYTES = 512 * 1024 * 1024;
/** Each pending call may wait for its peers up to its timeout_ms, holding its body's memory. */
export const DEFAULT_MAX_PENDING_CALLS = 1024;

export type ServicePhase = "starting" | "rendezvous" | "ready" | "stopping" | "failed";

export class RankService {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly membership: Membership;
  readonly peers: PeerClient;
  readonly instance = crypto.randomUUID();
  readonly startedAt = Date.now();
  phase: ServicePhase = "starting";
  failure: string | null = null;
  dataPlane!: DataPlane;
  matcher: Matcher | null = null;
  hub: CoordinatorHub | null = null;
  rendezvous: RendezvousServer | null = null;
  link: CoordinatorLink | null = null;
  /** This rank's heartbeat thread (control/liveness.ts). */
  liveness: Liveness = Liveness.none();
  /** Rank 0: failure detection, reconciliation, activation, groups (control/coordinator.ts). */
  coordinator: Coordinator | null = null;
  /** Every rank: applies views, acks them, waits for re-issues (control/participant.ts). */
  participant!: Participant;
  private channel: CoordinatorChannel | null = null;
  /** Peers this rank's data plane has marked down (removed ranks, or this rank inactive). */
  private downPeers = new Set<number>();
  agreement!: Agreement;
  collectives!: CollectiveRunner;
  p2p!: P2P;
  /** Arrival order of this rank's calls (see control/sequencer.ts). */
  readonly sequencer = new Sequencer();
  server: Server<LinkData> | null = null;
  unixServer: Server<LinkData> | null = null;
  readonly app: ReturnType<typeof createApp>;
  private readyResolvers: (() => void)[] = [];

  /** The Authorization header every request must carry (null: no token set). */
  private readonly bearer: Buffer | null;

  /** LOCAL_RANK / LOCAL_WORLD_SIZE (torchrun): which GPU this rank uses (util/local-rank.ts). */
  readonly localRank: LocalRank;

  constructor(readonly config: ServiceConfig) {
    this.localRank = config.localRank ?? localRankOf(config.rank, {});
    this.bearer = expectedBearer(config.token);
    this.log = new Logger(`rank ${config.rank}`);
    this.metrics = new Metrics(config.rank);
    this.membership = new Membership(config.worldSizeMax, config.worldSize);
    this.peers = new PeerClient(config.token);
    this.app = createApp(this);
  }

  get rank(): number {
    return this.config.rank;
  }

  /** Collectives and p2p calls being served now (admitCall .. finishCall). */
  callsInFlight = 0;

  /** Counts a call in, or refuses it (429) when the rank holds its limit already. */
  admitCall(): void {
    const limit = this.config.maxPendingCalls ?? DEFAULT_MAX_PENDING_CALLS;
    if (this.callsInFlight >= limit) {
      throw new TooManyRequests(`rank ${this.rank} holds ${this.callsInFlight} pending calls, its limit (--max-pending-calls / MOONRING_MAX_PENDING_CALLS): retry once some finish`, {
        limit,
      });
    }
    this.callsInFlight++;
  }

  finishCall(): void {
    this.callsInFlight--;
  }

  get ready(): boolean {
    return this.phase === "ready" && this.membership.isActive(this.rank) && !this.participant?.masterLost;
  }

  /** healthy / awaiting / failed / left, as in /health. */
  get state(): RankState {
    if (this.phase === "stopping") return "left";
    if (this.phase === "failed" || this.participant?.masterLost) return "failed";
    if (this.phase !== "ready") return "awaiting";
    return this.membership.get(this.rank)?.state ?? "awaiting";
  }

  /** Why this rank can never serve again (liveness fails), or null while it can or may. */
  deadReason(): string | null {
    if (this.participant?.masterLost) return `the coordinator (rank 0) is lost: ${this.participant.masterLost}`;
    if (this.phase === "failed") return `rendezvous failed: ${this.failure ?? "unknown"}`;
    const rec = this.phase === "ready" ? this.membership.get(this.rank) : undefined;
    if (rec?.state === "failed") return `removed from the world as failed at epoch ${this.membership.epoch}${rec.reason ? ` (${rec.reason})` : ""}`;
    return null;
  }

  /** Why this rank can't serve a collective now (503), for routes. */
  unavailable(): ApiError {
    if (this.participant?.masterLost) {
      return new MasterLost(`rank ${this.rank}: the coordinator (rank 0) is lost (${this.participant.masterLost}); restart the world`);
    }
    if (this.phase === "ready") {
      const rec = this.membership.get(this.rank);
      const state = rec?.state ?? "awaiting";
      if (state === "awaiting") return new NotReady(`rank ${this.rank} is awaiting: not an active member (awaiting activation)`, { state });
      return new NotReady(`rank ${this.rank} is ${state}: removed from the world at epoch ${this.membership.epoch}${rec?.reason ? ` (${rec.reason})` : ""}`, {
        state,
      });
    }
    return new NotReady(`rank ${this.rank} is not ready: rendezvous ${this.phase === "failed" ? `failed: ${this.failure}` : "in progress"}`, {
      state: this.state,
    });
  }

  get heartbeatIntervalMs(): number {
    return this.config.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
  }

  get heartbeatTimeoutMs(): number {
    return this.config.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
  }

  /** Sends a membership request (activate, deactivate, group) to rank 0 (in process on rank 0). */
  async toCoordinator(msg: Record<string, unknown>, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    if (this.participant?.masterLost) throw this.unavailable();
    if (!this.channel) throw new NotReady(`rank ${this.rank} is not connected to rank 0 yet`);
    return this.channel.request(msg, timeoutMs);
  }

  get url(): string {
    return httpUrl(this.advertiseHost, this.port);
  }

  /** This rank's data-plane links for GET /cluster (undefined before start or without a native engine). */
  dataPlaneLinks(): DataPlaneLinks | undefined {
    if (!this.dataPlane?.links) return undefined;
    try {
      return this.dataPlane.links();
    } catch {
      return undefined; // closed (the rank is stopping)
    }
  }

  get port(): number {
    return this.server?.port ?? this.config.port;
  }

  get advertiseHost(): string {
    if (this.config.advertiseHost) return this.config.advertiseHost;
    const h = this.config.host;
    return h === "0.0.0.0" || h === "::" ? hostname() : h;
  }

  get masterUrl(): string {
    return httpUrl(this.config.masterHost, this.config.masterPort);
  }

  /** Resolves once this rank is ready (tests, launch). */
  whenReady(): Promise<void> {
    if (this.phase === "ready") return Promise.resolve();
    return new Promise((r) => this.readyResolvers.push(r));
  }

  /** Starts HTTP and the data plane, then runs rendezvous in the background. */
  async start(): Promise<void> {
    const c = this.config;
    const factory = c.dataPlaneFactory ?? (await nativeDataPlaneFactory());
    this.dataPlane = await factory({
      rank: c.rank,
      worldSizeMax: c.worldSizeMax,
      clusterId: c.clusterId ?? `moonring@${c.masterHost}:${c.masterPort}`,
      token: c.token,
      listenHost: c.host,
      listenPort: c.dataPort,
    });
    if (c.heartbeatThread !== false) {
      this.liveness = await Liveness.start({
        rank: c.rank,
        instance: this.instance,
        key: c.token ?? c.clusterId ?? `moonring@${c.masterHost}:${c.masterPort}`,
        host: c.host,
        intervalMs: this.heartbeatIntervalMs,
      });
    }
    this.collectives = new CollectiveRunner(c.rank, this.dataPlane, this.membership, this.agreementProxy(), this.metrics);
    this.participant = new Participant(c.rank, this.membership, this.collectives, this.log);
    this.collectives.hooks = this.participant;
    this.participant.runLinkCheck = (ranks, opId, timeoutMs) => this.dataPlane.run({ kind: "barrier", dtype: "uint8", opId, ranks, count: 0, timeoutMs });
    this.p2p = new P2P(c.rank, this.dataPlane, this.membership, this.peers, this.metrics, this.log);
    this.membership.onChange((view, prev) => {
      this.syncPeers(view, prev);
      this.p2p.onView();
    });
    this.participant.start();
    if (c.rank === 0) {
      this.matcher = new Matcher(this.membership);
      this.hub = new CoordinatorHub(this.matcher, this.log);
      this.rendezvous = new RendezvousServer(this.membership, this.log);
      this.agreement = new Agreement(c.rank, this.matcher, null);
      const co = new Coordinator(this.membership, this.matcher, this.hub, this.rendezvous, (msg) => this.participant.onPush(msg), this.log, {
        heartbeatIntervalMs: this.heartbeatIntervalMs,
        heartbeatTimeoutMs: this.heartbeatTimeoutMs,
        liveness: this.liveness,
        self: c.rank,
      });
      this.coordinator = co;
      this.rendezvous.onComplete = () => this.participant.scheduleAck();
      co.start();
      this.channel = {
        send: (msg) => {
          if (msg.t === "view_ack") co.onAck(0, msg);
          else if (msg.t === "linkcheck_done") co.onLinkCheckDone(0, msg);
        },
        request: async (msg) => {
          switch (msg.t) {
            case "suspect":
              return co.suspect(0, Number(msg.peer), String(msg.why ?? ""), msg.kind === "timeout" ? "timeout" : "peer");
            case "activate":
              return co.activate(msg.ranks);
            case "deactivate":
              return co.deactivate(msg.ranks);
            case "group":
              return co.defineGroup(msg.name, msg.ranks);
          }
          throw new Error(`unknown request ${String(msg.t)}`);
        },
      };
      this.participant.attach(this.channel);
    }
    this.listen();
    this.log.info(`listening on ${this.url} (data plane port ${this.dataPlane.dataPort}); rendezvous via ${this.masterUrl}`);
    void this.runRendezvous().catch((e) => {
      this.phase = "failed";
      this.failure = (e as Error).message;
      this.log.error(`rendezvous failed: ${(e as Error).message}`);
      this.onFatal?.(e as Error);
    });
  }

  /** serve sets this to exit the process when rendezvous fails for good. */
  onFatal: ((e: Error) => void) | null = null;

  private agreementProxy(): Agreement {
    // The runner is built before the link exists on ranks != 0; route through the current one.
    return { join: (d, signal) => this.agreement.join(d, signal) } as Agreement;
  }

  /** POST /collective/{op} with a JSON body, without Hono (see listen()). */
  private async collectiveFast(op: string, req: Request): Promise<Response> {
    let res: Response;
    try {
      authorize(this.bearer, req.headers.get("authorization"));
      res = await handleCollective(this, op, req);
    } catch (e) {
      res = errorResponse(this, e as Error, "POST", `/collective/${op}`);
    }
    this.metrics.httpRequest("POST", "/collective/:op", res.status);
    return res;
  }

  private listen(): void {
    const c = this.config;
    const app = this.app;
    const svc = this;
    const hub = this.hub;
    const bearer = this.bearer;
    const options = {
      // Bun's own 413 has no JSON body: let everything through and enforce the limit in body.ts
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      development: false,
      fetch(req: Request, server: Server<LinkData>) {
        if (hub && req.url.includes("/internal/ws")) {
          const u = new URL(req.url);
          if (u.pathname === "/internal/ws") {
            try {
              authorize(bearer, req.headers.get("authorization"), "bad token on control link");
            } catch (e) {
              return Response.json((e as ApiError).toJSON(), { status: 401 });
            }
            const rank = Number(u.searchParams.get("rank"));
            const instance = u.searchParams.get("instance") ?? "";
            if (server.upgrade(req, { data: { rank, instance } })) return undefined;
            return Response.json({ error: { code: "invalid_request", message: "websocket upgrade failed" } }, { status: 400 });
          }
        }
        // Fast path: JSON collectives skip Hono's router, context and middleware (the same
        // auth, metrics and error mapping inline); everything else goes through the app.
        if (req.method === "POST") {
          const op = collectivePathOp(req.url);
          if (op !== null && !isOctetStream(req)) return svc.collectiveFast(op, req);
        }
        return app.fetch(req, { server });
      },
      websocket: hub
        ? hub.websocket
        : {
            message() {},
          },
      error(e: Error) {
        return Response.json({ error: { code: "internal", message: String(e?.message ?? e) } }, { status: 500 });
      },
    };
    // idleTimeout 0: long collectives must not be cut (Bun's default is 10 s).
    this.server = Bun.serve<LinkData>({ ...options, hostname: c.host, port: c.port, idleTimeout: 0 });
    // The same API on a Unix-domain socket, for programs of this host (serve --unix).
    if (c.unixPath) {
      rmSync(c.unixPath, { force: true }); // a socket file left by a killed rank
      // Bun's types leave idleTimeout out for unix sockets, but it applies (10 s by default).
      const unixOptions = { ...options, unix: c.unixPath, idleTimeout: 0 };
      this.unixServer = Bun.serve<LinkData>(unixOptions as unknown as Parameters<typeof Bun.serve<LinkData>>[0]);
    }
  }

  private async runRendezvous(): Promise<void> {
    const c = this.config;
    this.phase = "rendezvous";
    // Rank 0 registers with itself directly (its master name may not resolve yet, e.g. in k8s).
    const bind = c.host === "0.0.0.0" ? "127.0.0.1" : c.host === "::" ? "::1" : c.host;
    const rzUrl = c.rank === 0 ? httpUrl(bind, this.port) : this.masterUrl;
    const client = new RendezvousClient(rzUrl, this.peers, this.log, c.rendezvousTimeoutMs);
    await client.register({
      rank: c.rank,
      world_size: c.worldSize,
      world_size_max: c.worldSizeMax,
      url: this.url,
      data_host: this.advertiseHost,
      data_port: this.dataPlane.dataPort,
      host_id: this.dataPlane.hostId.toString(),
      pid: process.pid,
      instance: this.instance,
      join: c.join,
      hb_port: this.liveness.port,
      rejoin: c.rejoin ?? "manual",
    });
    const view = await client.table();
    if ((this.phase as ServicePhase) === "stopping") return;
    if (c.rank !== 0) this.membership.applyView(view);
    else this.syncPeers(this.membership.view(), null);
    if (c.rank !== 0) {
      const wsUrl = this.masterUrl.replace(/^http/, "ws") + "/internal/ws";
      const link = new CoordinatorLink(wsUrl, c.rank, this.instance, c.token, this.log, this.liveness);
      this.link = link;
      const coord = this.membership.get(0);
      if (coord) this.liveness.target(coord.dataHost, coord.hbPort ?? 0);
      link.onReconnect = () => this.participant.scheduleAck();
      link.onPush = (msg) => {
        if (msg.t === "view" || msg.t === "retry" || msg.t === "ping" || msg.t === "linkcheck") this.participant.onPush(msg);
        else if (msg.t !== "hb") this.onPush?.(msg);
      };
      link.onDown = (why, clean) => this.onMasterLost(why, clean);
      await link.connect(c.rendezvousTimeoutMs);
      this.agreement = new Agreement(c.rank, null, link);
      this.channel = {
        send: (msg) => {
          link.send(msg);
        },
        request: async (msg, timeoutMs) => {
          const res = await link.request(msg, timeoutMs).catch((e: Error) => {
            throw link.lost ? this.unavailable() : new NotReady(`rank ${this.rank}: rank 0 did not answer: ${e.message}`);
          });
          if (res.error !== undefined) {
            throw apiErrorFromJSON(Number(res.status ?? 500), { error: { code: res.code ?? "internal", message: String(res.error), ...((res.details as object) ?? {}) } });
          }
          const { t: _t, id: _id, ...body } = res;
          return body;
        },
      };
      this.participant.attach(this.channel);
      link.startHeartbeat(this.heartbeatIntervalMs, this.heartbeatTimeoutMs);
    }
    if (!c.join && c.rank < c.worldSize) await client.ready(c.rank);
    if ((this.phase as ServicePhase) === "stopping") return;
    this.phase = "ready";
    this.log.info(
      this.membership.isActive(c.rank)
        ? `ready: world of ${this.membership.activeRanks().length} ranks (epoch ${this.membership.epoch})`
        : `registered; awaiting activation (epoch ${this.membership.epoch})`,
    );
    for (const r of this.readyResolvers.splice(0)) r();
  }

  /** Extra pushes from rank 0 (fault tolerance hooks in here). */
  onPush: ((msg: Record<string, unknown>) => void) | null = null;

  /**
   * Keeps the data plane's peer table in step with the membership view: a peer that is not
   * active (failed, left, awaiting), or every peer while this rank itself is not active, is
   * marked down (ops waiting on it fail at once with EPEER); an active peer that was down or
   * moved (a replacement on a new port) gets setPeer, which resets its links.
   */
  private syncPeers(view: MembershipView, prev: MembershipView | null): void {
    const meActive = !this.participant?.masterLost && view.ranks.some((r) => r.rank === this.rank && r.active);
    for (const r of view.ranks) {
      if (r.rank === this.rank) continue;
      if (!meActive || !r.active) {
        this.markPeerDown(r.rank);
        continue;
      }
      const p = prev?.ranks.find((x) => x.rank === r.rank);
      const same = p && p.dataHost === r.dataHost && p.dataPort === r.dataPort && p.hostId === r.hostId && p.instance === r.instance;
      if (same && !this.downPeers.has(r.rank)) continue;
      this.downPeers.delete(r.rank);
      try {
        this.dataPlane.setPeer(r.rank, r.dataHost, r.dataPort, BigInt(r.hostId));
      } catch (e) {
        this.log.error(`setPeer(${r.rank}, ${r.dataHost}:${r.dataPort}) failed: ${(e as Error).message}`);
      }
    }
  }

  private markPeerDown(rank: number): void {
    if (this.downPeers.has(rank)) return;
    this.downPeers.add(rank);
    try {
      this.dataPlane.peerDown(rank);
    } catch (e) {
      this.log.error(`peerDown(${rank}) failed: ${(e as Error).message}`);
    }
  }

  /** Rank 0 is lost: every call fails fast with 503 master_lost from now on (final). */
  private onMasterLost(why: string, clean = false): void {
    if ((this.phase as ServicePhase) === "stopping") return;
    const self = this.membership.get(this.rank);
    if (self && !self.active && (self.state === "failed" || self.state === "left")) {
      // Rank 0 removed this rank (its view said so before it closed the link): not a lost master.
      this.log.error(`removed from the world by rank 0 (${self.state}: ${self.reason ?? "no reason given"}); restart this rank with --join to rejoin`);
      for (const r of this.membership.all()) if (r.rank !== this.rank) this.markPeerDown(r.rank);
      this.p2p.halt(`rank ${this.rank} was removed from the world`);
      return;
    }
    this.log[clean ? "info" : "error"](`coordinator (rank 0) lost: ${why}; this rank fails every call with 503 master_lost until it is restarted`);
    this.participant.lost(why);
    for (const r of this.membership.all()) if (r.rank !== this.rank) this.markPeerDown(r.rank);
    this.p2p.halt(`the coordinator (rank 0) is lost: ${why}`);
  }

  async stop(): Promise<void> {
    if ((this.phase as ServicePhase) === "stopping") return;
    this.phase = "stopping";
    this.coordinator?.stop();
    this.link?.close();
    this.liveness.stop();
    this.hub?.closeAll();
    try {
      this.server?.stop(true);
      this.unixServer?.stop(true);
      if (this.config.unixPath) rmSync(this.config.unixPath, { force: true });
    } catch {
      // already stopped
    }
    try {
      this.dataPlane?.close();
    } catch (e) {
      this.log.warn(`data plane close: ${(e as Error).message}`);
    }
  }
}

/** The op of a POST /collective/{op} URL (no trailing slash, any query), else null. */
export function collectivePathOp(url: string): string | null {
  // http://host:port/collective/op[?query]: the path starts at the first "/" after "//"
  const p = url.indexOf("/", url.indexOf("//") + 2);
  if (p < 0 || !url.startsWith("/collective/", p)) return null;
  const q = url.indexOf("?", p);
  const op = url.slice(p + 12, q < 0 ? url.length : q);
  return /^[a-z_]+$/.test(op) ? op : null;
}
