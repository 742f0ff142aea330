// One rank service: HTTP server (Hono on Bun.serve), data plane, rendezvous, agreement.
// `serve` builds one of these; tests build several in one process with a fake data plane.
import type { Server } from "bun";
import { hostname } from "node:os";
import { Agreement } from "../control/agreement";
import { CollectiveRunner } from "../control/collective";
import { CoordinatorHub, type LinkData } from "../control/hub";
import { CoordinatorLink } from "../control/link";
import { Matcher } from "../control/matcher";
import { Membership, type MembershipView, type RankState } from "../control/membership";
import { P2P } from "../control/p2p";
import { PeerClient } from "../control/peers";
import { RendezvousClient, RendezvousServer } from "../control/rendezvous";
import { Sequencer } from "../control/sequencer";
import type { DataPlane } from "../native/types";
import { Logger } from "../util/log";
import { Metrics } from "../util/metrics";
import { httpUrl } from "../util/net";
import { createApp } from "./app";
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
  clusterId?: string;
  rendezvousTimeoutMs: number;
  /** Tests inject a fake; the real service uses src/native/engine.ts. */
  dataPlaneFactory?: DataPlaneFactory;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_MAX_TENSOR_BYTES = 512 * 1024 * 1024;

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
  agreement!: Agreement;
  collectives!: CollectiveRunner;
  p2p!: P2P;
  /** Arrival order of this rank's calls (see control/sequencer.ts). */
  readonly sequencer = new Sequencer();
  server: Server<LinkData> | null = null;
  readonly app: ReturnType<typeof createApp>;
  private readyResolvers: (() => void)[] = [];

  constructor(readonly config: ServiceConfig) {
    this.log = new Logger(`rank ${config.rank}`);
    this.metrics = new Metrics(config.rank);
    this.membership = new Membership(config.worldSizeMax, config.worldSize);
    this.peers = new PeerClient(config.token);
    this.app = createApp(this);
  }

  get rank(): number {
    return this.config.rank;
  }

  get ready(): boolean {
    return this.phase === "ready" && this.membership.isActive(this.rank);
  }

  /** healthy / awaiting / failed / left, as in /health. */
  get state(): RankState {
    if (this.phase === "stopping") return "left";
    if (this.phase === "failed") return "failed";
    if (this.phase !== "ready") return "awaiting";
    return this.membership.get(this.rank)?.state ?? "awaiting";
  }

  get url(): string {
    return httpUrl(this.advertiseHost, this.port);
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
    if (c.rank === 0) {
      this.matcher = new Matcher(this.membership);
      this.hub = new CoordinatorHub(this.matcher, this.log);
      this.rendezvous = new RendezvousServer(this.membership, this.log);
      this.rendezvous.onViewChange = (view) => this.hub!.broadcast({ t: "view", view });
      this.agreement = new Agreement(c.rank, this.matcher, null);
    }
    this.collectives = new CollectiveRunner(c.rank, this.dataPlane, this.membership, this.agreementProxy(), this.metrics);
    this.p2p = new P2P(c.rank, this.dataPlane, this.membership, this.peers, this.metrics, this.log);
    this.membership.onChange((view, prev) => this.syncPeers(view, prev));
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
    return { join: (d) => this.agreement.join(d) } as Agreement;
  }

  private listen(): void {
    const c = this.config;
    const app = this.app;
    const hub = this.hub;
    const token = c.token;
    this.server = Bun.serve<LinkData>({
      hostname: c.host,
      port: c.port,
      idleTimeout: 0, // long collectives must not be cut (Bun's default is 10 s)
      // Bun's own 413 has no JSON body: let everything through and enforce the limit in body.ts
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      development: false,
      fetch(req, server) {
        if (hub && req.url.includes("/internal/ws")) {
          const u = new URL(req.url);
          if (u.pathname === "/internal/ws") {
            if (token && req.headers.get("authorization") !== `Bearer ${token}`) {
              return Response.json({ error: { code: "unauthorized", message: "bad token on control link" } }, { status: 401 });
            }
            const rank = Number(u.searchParams.get("rank"));
            const instance = u.searchParams.get("instance") ?? "";
            if (server.upgrade(req, { data: { rank, instance } })) return undefined;
            return Response.json({ error: { code: "invalid_request", message: "websocket upgrade failed" } }, { status: 400 });
          }
        }
        return app.fetch(req, { server });
      },
      websocket: hub
        ? hub.websocket
        : {
            message() {},
          },
      error(e) {
        return Response.json({ error: { code: "internal", message: String(e?.message ?? e) } }, { status: 500 });
      },
    });
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
    });
    const view = await client.table();
    if ((this.phase as ServicePhase) === "stopping") return;
    if (c.rank !== 0) this.membership.applyView(view);
    else this.syncPeers(this.membership.view(), null);
    if (c.rank !== 0) {
      const wsUrl = this.masterUrl.replace(/^http/, "ws") + "/internal/ws";
      this.link = new CoordinatorLink(wsUrl, c.rank, this.instance, c.token, this.log);
      this.link.onPush = (msg) => {
        if (msg.t === "view") this.membership.applyView(msg.view as MembershipView);
        else this.onPush?.(msg);
      };
      await this.link.connect(c.rendezvousTimeoutMs);
      this.agreement = new Agreement(c.rank, null, this.link);
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

  /** Keeps the data plane's peer table in step with the membership view. */
  private syncPeers(view: MembershipView, prev: MembershipView | null): void {
    for (const r of view.ranks) {
      if (r.rank === this.rank) continue;
      const p = prev?.ranks.find((x) => x.rank === r.rank);
      if (p && p.dataHost === r.dataHost && p.dataPort === r.dataPort && p.hostId === r.hostId && p.instance === r.instance) continue;
      if (r.state === "failed" || r.state === "left") continue;
      try {
        this.dataPlane.setPeer(r.rank, r.dataHost, r.dataPort, BigInt(r.hostId));
      } catch (e) {
        this.log.error(`setPeer(${r.rank}, ${r.dataHost}:${r.dataPort}) failed: ${(e as Error).message}`);
      }
    }
  }

  async stop(): Promise<void> {
    if ((this.phase as ServicePhase) === "stopping") return;
    this.phase = "stopping";
    this.link?.close();
    this.hub?.closeAll();
    try {
      this.server?.stop(true);
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
