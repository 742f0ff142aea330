// One rank service: data plane, rendezvous, agreement, membership, coordinator failover. Its HTTP
// listeners are server/listen.ts, its configuration server/service-config.ts. `serve` builds one
// of these; tests build several in one process with a fake data plane.
import { rmSync } from "node:fs";
import type { Server } from "bun";
import { hostname } from "node:os";
import { Agreement } from "../control/agreement";
import type { CallDesc, GoDecision } from "../control/matcher";
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
import { RendezvousClient, RendezvousRedirected, RendezvousServer } from "../control/rendezvous";
import { Sequencer } from "../control/sequencer";
import { EtcdClient } from "../control/etcd";
import { EtcdStore, leaseTtlS, type RendezvousStore } from "../control/etcd-store";
import type { DataPlane, DataPlaneLinks } from "../native/types";
import { apiErrorFromJSON, MasterLost, NotReady, type ApiError, TooManyRequests } from "../errors";
import { expectedBearer, isAuthorized } from "./auth";
import { isLoopback, peerIsThisUser } from "./peer-user";
import { Logger } from "../util/log";
import { localRankOf, type LocalRank } from "../util/local-rank";
import { Metrics } from "../util/metrics";
import { httpUrl } from "../util/net";
import { createApp } from "./app";
import type { Phase } from "./routes/facade";
import { nativeDataPlaneFactory } from "./dataplane";
import { listen } from "./listen";
import { DEFAULT_MAX_PENDING_CALLS, type ServiceConfig } from "./service-config";
import { electInStore, FAILOVER_CONNECT_TIMEOUTS, findCoordinatorInStore, leadInStore } from "./service-store";

// The configuration and the collectives' URL parser live in their own modules; importers of service.ts keep them here.
export { DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PENDING_CALLS, DEFAULT_MAX_TENSOR_BYTES, type ServiceConfig } from "./service-config";
export { collectivePathOp } from "./listen";

/** How often the coordinator looks for restarted processes of failed ranks, and how many per round. */
const RECRUIT_INTERVAL_MS = 1000;
const RECRUIT_PROBES_MAX = 16;
/** A refused connection this fast means the peer's host is up and its port closed (its process is gone). */
const REFUSED_FAST_MS = 500;
/** Failovers remembered for /cluster. */
const FAILOVERS_KEPT = 16;

/** The lifecycle phases (defined with the routes' views of the service, routes/facade.ts). */
export type ServicePhase = Phase;

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
  /** Where rendezvous, leadership and epochs live besides this process: null = built-in (rank 0's HTTP). */
  store: RendezvousStore | null = null;
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
  readonly bearer: Buffer | null;

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
    if (this.participant?.masterLost) return `no coordinator: ${this.participant.masterLost}`;
    if (this.phase === "failed") return `rendezvous failed: ${this.failure ?? "unknown"}`;
    const rec = this.phase === "ready" ? this.membership.get(this.rank) : undefined;
    if (rec?.state === "failed") return `removed from the world as failed at epoch ${this.membership.epoch}${rec.reason ? ` (${rec.reason})` : ""}`;
    return null;
  }

  /** Why this rank can't serve a collective now (503), for routes. */
  unavailable(): ApiError {
    if (this.participant?.masterLost) {
      return new MasterLost(`rank ${this.rank}: no coordinator (${this.participant.masterLost}); restart this rank`);
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
    if (c.etcd) this.store = new EtcdStore(new EtcdClient(c.etcd.endpoints), c.etcd.job, leaseTtlS(this.heartbeatTimeoutMs), this.log);
    else if (c.rank === 0) this.becomeCoordinator(null);
    this.listen();
    this.log.info(`listening on ${this.url} (data plane port ${this.dataPlane.dataPort}); rendezvous via ${this.store?.description ?? this.masterUrl}`);
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
    return { join: (d: CallDesc, signal?: AbortSignal) => this.joinAgreement(d, signal) } as Agreement;
  }

  /**
   * A call's agreement. When the coordinator is lost before it answered, the call is sent
   * again to the coordinator that takes over (within the call's timeout): the lost one's
   * matcher died with it, so every survivor's pending calls meet again at the new one.
   */
  private joinAgreement(d: CallDesc, signal?: AbortSignal): Promise<GoDecision> {
    const first = this.agreement;
    const until = performance.now() + d.timeoutMs;
    const again = (a: Agreement, e: unknown): Promise<GoDecision> => {
      if (!(e instanceof MasterLost)) throw e;
      return this.whenCoordinatorChanged(a, until - performance.now()).then((next) => {
        if (!next) throw e;
        return next.join(d, signal).catch((e2: unknown) => again(next, e2));
      });
    };
    return first.join(d, signal).catch((e: unknown) => again(first, e));
  }

  /**
   * Whether a REST caller may in: the bearer token, or (launch's per-job secret) a loopback
   * connection from a process of this user (server/peer-user.ts). `server` gives the peer's
   * address; absent in app.request() tests, where only the token counts.
   */
  isCaller(authorization: string | null | undefined, req: Request, server: Pick<Server<LinkData>, "requestIP"> | undefined): boolean | Promise<boolean> {
    if (isAuthorized(this.bearer, authorization)) return true; // no promise on the hot path
    if (this.config.localUserAuth !== true || server === undefined) return false;
    // the Unix socket (mode 0600) admits only this user: no address to look up there
    if (server === this.unixServer) return true;
    return peerIsThisUser(server.requestIP(req), this.port);
  }

  /** How callers and peers prove they belong: /health's "auth". */
  get authMode(): "token" | "token+local-user" | "none" {
    return this.config.token ? (this.config.localUserAuth ? "token+local-user" : "token") : "none";
  }

  /**
   * Set when nothing guards this rank: no token (launch always sets one; serve needs
   * MOONRING_TOKEN). Said at start and in /health; loudest when other hosts can reach it.
   */
  securityWarning(): string | null {
    if (this.config.token) return null;
    const h = this.config.host;
    if (isLoopback(h) || h === "localhost") {
      return "no MOONRING_TOKEN: any local process can call this rank's REST API and join its data plane as a rank (moonring launch sets a per-job token)";
    }
    return `no MOONRING_TOKEN while serving on ${h}: any host that reaches this rank's ports can call its REST API and join its data plane as a rank; set MOONRING_TOKEN (one secret for every rank of the job)`;
  }

  private listen(): void {
    const servers = listen(this);
    this.server = servers.server;
    this.unixServer = servers.unixServer;
  }

  private async runRendezvous(): Promise<void> {
    const c = this.config;
    this.phase = "rendezvous";
    // Rank 0 registers with itself directly (its master name may not resolve yet, e.g. in k8s).
    const bind = c.host === "0.0.0.0" ? "127.0.0.1" : c.host === "::" ? "::1" : c.host;
    let rzUrl = c.rank === 0 ? httpUrl(bind, this.port) : this.masterUrl;
    let join = c.join;
    if (this.store) ({ url: rzUrl, join } = await findCoordinatorInStore(this, this.store, httpUrl(bind, this.port)));
    for (;;) {
      // a redirect that arrives once this rank follows a coordinator is late (sent before it
      // registered): it is in its world already, and following again would open a second link
      const client = new RendezvousClient(rzUrl, this.peers, this.log, c.rendezvousTimeoutMs, () => (this.link ? null : this.redirectTo));
      try {
        await this.rendezvousAt(client, join);
        return;
      } catch (e) {
        if (!(e instanceof RendezvousRedirected)) throw e;
        // a running world's coordinator found this (restarted) rank: join that world instead
        this.log.warn(`joining the running world: its coordinator is at ${e.url}`);
        rzUrl = e.url;
        join = true;
        this.redirectTo = null;
      }
    }
  }

  /** Where a running world's coordinator told this rank, still in rendezvous, to register (POST /internal/follow). */
  redirectTo: string | null = null;

  /** A running world's coordinator found this restarted rank in rendezvous: go and join it. */
  followWorld(url: string): boolean {
    // A rank that follows a coordinator already is in its world (still in "rendezvous" only
    // while it reports ready). A recruiter's probe sent before it registered must not make it
    // register and follow again: its two control links replaced each other at the hub (close
    // 4000) over and over, and its first collective never reached the matcher.
    if (this.phase !== "rendezvous" || this.rendezvous?.isComplete || this.link) return false;
    if (this.rendezvous) {
      // a restarted rank 0 that started a fresh rendezvous: give up the coordinator role
      this.coordinator?.stop();
      this.hub?.closeAll();
      this.coordinator = null;
      this.hub = null;
      this.matcher = null;
      this.rendezvous.abandon(url);
    }
    this.redirectTo = url;
    return true;
  }

  private async rendezvousAt(client: RendezvousClient, join: boolean): Promise<void> {
    const c = this.config;
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
      join,
      hb_port: this.liveness.port,
      rejoin: c.rejoin ?? "manual",
    });
    const view = await client.table();
    if ((this.phase as ServicePhase) === "stopping") return;
    if (this.isCoordinator) this.syncPeers(this.membership.view(), null);
    else {
      this.membership.applyView(view);
      await this.follow(this.membership.coordinator, c.rendezvousTimeoutMs);
    }
    if (!join && c.rank < c.worldSize) await client.ready(c.rank);
    if ((this.phase as ServicePhase) === "stopping") return;
    this.phase = "ready";
    this.redirectTo = null;
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
    // by rank: a find() per rank made each view O(world^2) on every rank (3.5 s for 1,024 in-process)
    const before = new Map(prev?.ranks.map((x) => [x.rank, x]));
    for (const r of view.ranks) {
      if (r.rank === this.rank) continue;
      if (!meActive || !r.active) {
        this.markPeerDown(r.rank);
        continue;
      }
      const p = before.get(r.rank);
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

  // ---- the coordinator role (rank 0 at start; a survivor after a failover) ----

  get isCoordinator(): boolean {
    return this.coordinator !== null;
  }

  /** 503 for a control link or registration that reached a rank which does not coordinate. */
  notCoordinator(): Response {
    const co = this.membership.get(this.membership.coordinator);
    const e = new NotReady(`rank ${this.rank} is not the coordinator (rank ${this.membership.coordinator} is${co ? `, at ${co.url}` : ""})`, {
      coordinator: this.membership.coordinator,
      ...(co ? { coordinator_url: co.url } : {}),
    });
    return Response.json(e.toJSON(), { status: e.status });
  }

  /**
   * Takes the coordinator role: matcher, hub, rendezvous, failure detection. At start (rank 0)
   * `takeover` is null; after a failover it names the lost coordinator(s): they are marked
   * failed in a new epoch that names this rank as coordinator, and every other active rank has
   * a heartbeat timeout of grace to connect before the usual detection applies.
   */
  becomeCoordinator(takeover: { lost: number[]; why: string } | null): void {
    const c = this.config;
    // op ids past any the predecessor used (it numbered from 1 up; 2^40 ops per coordinator)
    const firstOpId = takeover ? BigInt(this.membership.epoch + 1) << 40n : 1n;
    this.matcher = new Matcher(this.membership, {}, firstOpId);
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
    this.rendezvous.previousGone = (r) => !this.hub?.isConnected(r) && this.liveness.silentMs(r) > 2 * this.heartbeatIntervalMs;
    this.rendezvous.replaced = (r, why) => co.markRemoved([r], "failed", why);
    this.link = null;
    this.liveness.target(null, 0);
    if (takeover) this.rendezvous.adopt();
    co.start();
    this.channel = {
      send: (msg) => {
        if (msg.t === "view_ack") co.onAck(c.rank, msg);
        else if (msg.t === "linkcheck_done") co.onLinkCheckDone(c.rank, msg);
      },
      request: async (msg) => {
        switch (msg.t) {
          case "suspect":
            return co.suspect(c.rank, Number(msg.peer), String(msg.why ?? ""), msg.kind === "timeout" ? "timeout" : "peer");
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
    if (takeover) {
      const lost = takeover.lost.filter((r) => this.membership.isActive(r));
      const reason = `the coordinator was lost (${takeover.why}); rank ${c.rank} took over`;
      const epoch = this.membership.update(lost.map((r) => ({ rank: r, state: "failed" as const, active: false, reason })), c.rank);
      co.stats.failures += lost.length;
      co.expect(this.membership.activeRanks(), this.heartbeatTimeoutMs);
      this.log.warn(`took over as coordinator (epoch ${epoch}; lost: ${takeover.lost.join(", ")}; active: ${this.membership.activeRanks().join(", ")})`);
    }
    this.startRecruiting();
    this.participant.attach(this.channel);
    if (this.store) leadInStore(this, this.store, co);
    this.coordinatorChanged();
  }

  /** Follows the coordinator `coord`: its control link, heartbeats to its heartbeat thread. */
  async follow(coord: number, connectMs: number): Promise<void> {
    const c = this.config;
    const rec = this.membership.get(coord);
    if (!rec) throw new Error(`rank ${coord} (the coordinator) is not in the view`);
    const wsUrl = rec.url.replace(/^http/, "ws") + "/internal/ws";
    const link = new CoordinatorLink(wsUrl, c.rank, this.instance, c.token, this.log, this.liveness, coord, rec.instance);
    this.liveness.target(rec.dataHost, rec.hbPort ?? 0);
    link.onReconnect = () => this.participant.scheduleAck();
    link.onPush = (msg) => {
      if (msg.t === "view" || msg.t === "retry" || msg.t === "ping" || msg.t === "linkcheck") this.participant.onPush(msg);
      else if (msg.t !== "hb") this.onPush?.(msg);
    };
    link.onDown = (why, clean) => {
      // a coordinator shutting down cleanly is usually the whole world stopping (launch,
      // compose down): fail over only if this rank is still running an interval later
      if (!clean) this.onCoordinatorLost(coord, why);
      else setTimeout(() => this.onCoordinatorLost(coord, why), this.heartbeatIntervalMs).unref?.();
    };
    await link.connect(connectMs);
    // one control link per process: a previous one (a rendezvous that started over) would
    // fight this one at the hub, each replacing the other on reconnect
    this.link?.retire("replaced by a new control link of this process");
    this.link = link;
    this.agreement = new Agreement(c.rank, null, link);
    this.channel = {
      send: (msg) => {
        link.send(msg);
      },
      request: async (msg, timeoutMs) => {
        const res = await link.request(msg, timeoutMs).catch((e: Error) => {
          throw link.lost ? this.unavailable() : new NotReady(`rank ${this.rank}: the coordinator (rank ${coord}) did not answer: ${e.message}`);
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
    this.coordinatorChanged();
  }

  private recruiter: ReturnType<typeof setInterval> | null = null;

  /**
   * The coordinator looks for restarted processes of failed ranks at their addresses (a
   * restarted rank 0 starts a fresh rendezvous of its own; a restarted rank whose rendezvous
   * address is dead can't find the world): one still in rendezvous is told to join this world.
   */
  private startRecruiting(): void {
    if (this.recruiter) return;
    let busy = false;
    this.recruiter = setInterval(() => {
      if (busy || !this.isCoordinator || (this.phase as ServicePhase) === "stopping") return;
      const failed = this.membership.all().filter((r) => r.state === "failed" && r.rank !== this.rank).slice(0, RECRUIT_PROBES_MAX);
      if (failed.length === 0) return;
      busy = true;
      // rank 0 also at the --master address: a restarted pod keeps its DNS name, not its IP
      const probes = failed.map((rec) => this.recruit(rec.rank, rec.url, rec.instance));
      if (!this.store && failed.some((rec) => rec.rank === 0) && this.masterUrl !== this.membership.get(0)?.url) probes.push(this.recruit(0, this.masterUrl, this.membership.get(0)!.instance));
      void Promise.all(probes).finally(() => (busy = false));
    }, RECRUIT_INTERVAL_MS);
    this.recruiter.unref?.();
  }

  private async recruit(rank: number, url: string, oldInstance: string): Promise<void> {
    try {
      const who = await this.peers.get<{ instance: string; phase: string; complete: boolean }>(`${url}/internal/whoami`, RECRUIT_INTERVAL_MS, "whoami");
      if (who.instance === oldInstance || who.phase !== "rendezvous" || who.complete) return;
      // it may have registered here while whoami was under way: then it needs no telling
      const rec = this.membership.get(rank);
      if (rec?.state !== "failed" || rec.instance !== oldInstance) return;
      await this.peers.post(`${url}/internal/follow`, { url: this.url }, RECRUIT_INTERVAL_MS, "follow");
      this.log.info(`found a restarted process at ${url} still in rendezvous: told it to join this world`);
    } catch {
      // nobody there (yet)
    }
  }

  private coordinatorWaiters: (() => void)[] = [];
  private failingOver = false;
  /** Failovers this process took part in: when the loss was detected and when a coordinator was back (ms, performance.now()). */
  private readonly failovers: { lost: number[]; detectedAt: number; resumedAt: number | null; coordinator: number | null }[] = [];

  /** The failovers this process saw, for /cluster: wall-clock times (epoch ms). */
  failoverLog(): { lost: number[]; coordinator: number | null; detected_at_ms: number; resumed_at_ms: number | null }[] {
    const wall = (t: number) => Math.round(performance.timeOrigin + t);
    return this.failovers.map((f) => ({
      lost: f.lost,
      coordinator: f.coordinator,
      detected_at_ms: wall(f.detectedAt),
      resumed_at_ms: f.resumedAt === null ? null : wall(f.resumedAt),
    }));
  }

  private coordinatorChanged(): void {
    for (const w of this.coordinatorWaiters.splice(0)) w();
  }

  /** Resolves with the agreement of a coordinator other than `old`'s, or null (none within `ms`, or lost for good). */
  private whenCoordinatorChanged(old: Agreement, ms: number): Promise<Agreement | null> {
    if (this.agreement !== old) return Promise.resolve(this.agreement);
    if (ms <= 0 || this.participant.masterLost) return Promise.resolve(null);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(this.agreement !== old && !this.participant.masterLost ? this.agreement : null);
      };
      const timer = setTimeout(() => {
        this.coordinatorWaiters = this.coordinatorWaiters.filter((w) => w !== done);
        resolve(null);
      }, ms);
      this.coordinatorWaiters.push(done);
    });
  }

  /** The coordinator is gone (its link stayed closed and its heartbeat silent, or it timed out). */
  private onCoordinatorLost(coord: number, why: string): void {
    if ((this.phase as ServicePhase) === "stopping") return;
    const self = this.membership.get(this.rank);
    if (self && !self.active && (self.state === "failed" || self.state === "left")) {
      // The coordinator removed this rank (its view said so before it closed the link).
      this.log.error(`removed from the world by the coordinator (${self.state}: ${self.reason ?? "no reason given"}); restart this rank to rejoin`);
      for (const r of this.membership.all()) if (r.rank !== this.rank) this.markPeerDown(r.rank);
      this.p2p.halt(`rank ${this.rank} was removed from the world`);
      return;
    }
    void this.failover([coord], why);
  }

  /**
   * Elects a new coordinator: the lowest active rank of the last view that is not known lost.
   * This rank takes over if it is that rank; otherwise it follows it, and moves on to the next
   * candidate when that one can't be reached within a few heartbeat timeouts.
   */
  private async failover(lost: number[], why: string): Promise<void> {
    if (this.failingOver) return;
    this.failingOver = true;
    const record = { lost: lost.slice(), detectedAt: performance.now(), resumedAt: null as number | null, coordinator: null as number | null };
    this.failovers.push(record);
    if (this.failovers.length > FAILOVERS_KEPT) this.failovers.shift();
    const gone = new Set(lost);
    /** Candidates that did not take over but may be alive (no answer at all: a partition?). */
    const unsure = new Set<number>();
    this.log.warn(`coordinator (rank ${lost.join(", ")}) lost: ${why}; electing a new one`);
    try {
      if (this.store) return await electInStore(this, this.store, record, lost, why);
      for (;;) {
        if ((this.phase as ServicePhase) === "stopping") return;
        const candidate = this.membership.activeRanks().find((r) => !gone.has(r) && !unsure.has(r));
        if (candidate === undefined) {
          this.loseCoordinatorForGood(`${why}; no active rank is left to take over`);
          return;
        }
        if (candidate === this.rank) {
          // Only past ranks known dead: one cut off from a lower rank that may be alive must not
          // start a world of its own (the side of the partition with that rank goes on).
          const lower = [...unsure].filter((r) => r < this.rank);
          if (lower.length > 0) {
            this.loseCoordinatorForGood(`${why}; rank${lower.length > 1 ? "s" : ""} ${lower.join(", ")} did not answer (maybe cut off from this rank, maybe coordinating)`);
            return;
          }
          this.becomeCoordinator({ lost: [...gone, ...unsure], why });
        } else {
          try {
            await this.follow(candidate, FAILOVER_CONNECT_TIMEOUTS * this.heartbeatTimeoutMs);
            this.log.warn(`following rank ${candidate}, the new coordinator`);
          } catch (e) {
            const dead = await this.refusesConnections(candidate);
            this.log.warn(`rank ${candidate} did not take over as coordinator (${dead ? "its port is closed" : "no answer"}): ${(e as Error).message}; trying the next rank`);
            (dead ? gone : unsure).add(candidate);
            continue;
          }
        }
        record.resumedAt = performance.now();
        record.coordinator = candidate;
        return;
      }
    } finally {
      this.failingOver = false;
    }
  }

  /** Whether `rank`'s HTTP port refuses connections (its process is gone) rather than not answering. */
  private async refusesConnections(rank: number): Promise<boolean> {
    const url = this.membership.get(rank)?.url;
    if (!url) return true;
    const t0 = performance.now();
    try {
      await fetch(`${url}/livez`, { signal: AbortSignal.timeout(this.heartbeatTimeoutMs) });
      return false;
    } catch (e) {
      // a live host answers a closed port with a reset at once; an unreachable one (a cut
      // link: ARP or routing fails) takes seconds, whatever the error is called
      return (e as { code?: string }).code === "ConnectionRefused" && performance.now() - t0 < REFUSED_FAST_MS;
    }
  }

  /** No coordinator can be found: every call fails fast with 503 master_lost from now on. */
  loseCoordinatorForGood(why: string): void {
    this.log.error(`coordinator lost: ${why}; this rank fails every call with 503 master_lost until it is restarted`);
    this.participant.lost(why);
    this.coordinatorChanged();
    for (const r of this.membership.all()) if (r.rank !== this.rank) this.markPeerDown(r.rank);
    this.p2p.halt(`the coordinator is lost: ${why}`);
  }

  async stop(): Promise<void> {
    if ((this.phase as ServicePhase) === "stopping") return;
    this.phase = "stopping";
    this.coordinator?.stop();
    if (this.recruiter) clearInterval(this.recruiter);
    this.link?.close();
    this.liveness.stop();
    this.hub?.closeAll();
    await this.store?.close();
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
