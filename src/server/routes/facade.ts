// What each route module may use of its rank service: one narrow, typed view per module, built
// from small capabilities (Hono style: routes depend on these, never on server/service.ts).
// RankService satisfies every view structurally; tsc checks it where createApp hands the
// service to the routes. tests/unit/layers.test.ts fails when a route module imports the service
// or takes anything but a view of this file.
import type { CollectiveRunner } from "../../control/collective";
import type { Coordinator } from "../../control/coordinator";
import type { Matcher } from "../../control/matcher";
import type { Membership, RankState } from "../../control/membership";
import type { P2P } from "../../control/p2p";
import type { Participant } from "../../control/participant";
import type { RendezvousServer } from "../../control/rendezvous";
import type { Sequencer } from "../../control/sequencer";
import type { ApiError } from "../../errors";
import type { DataPlane } from "../../native/types";
import type { LocalRank } from "../../util/local-rank";
import type { Logger } from "../../util/log";
import type { Metrics } from "../../util/metrics";
import type { ServiceConfig } from "../service-config";

// ---- capabilities ----

/** Where the rank stands in its lifecycle (the service's phases). */
export type Phase = "starting" | "rendezvous" | "ready" | "stopping" | "failed";

/** Whether the rank serves calls now, and the 503 saying why not (requireReady). */
export interface Readiness {
  readonly rank: number;
  readonly ready: boolean;
  unavailable(): ApiError;
}

/** Calls counted against the pending-call cap (429) and kept in arrival order. */
export interface CallGate {
  admitCall(): void;
  finishCall(): void;
  readonly sequencer: Pick<Sequencer, "take" | "turn" | "bounded" | "finish">;
}

/** The request size limits. */
export interface BodyLimits {
  readonly config: Pick<ServiceConfig, "maxBodyBytes" | "maxTensorBytes">;
}

/** Whether a caller may in (the bearer token, or launch's local-user rule). */
export interface CallerCheck {
  isCaller(authorization: string | null | undefined, req: Request, server: { requestIP(req: Request): unknown } | undefined): boolean | Promise<boolean>;
}

// ---- one view per route module ----

/** routes/buffers.ts: device/host buffers, and collectives / p2p in place on them. */
export interface BuffersFacade extends Readiness, CallGate, BodyLimits {
  readonly config: Pick<ServiceConfig, "maxBodyBytes" | "maxTensorBytes" | "device" | "shmGroup">;
  readonly localRank: LocalRank;
  readonly dataPlane: DataPlane;
  readonly membership: Pick<Membership, "groupRanks" | "groupDef" | "groupSize" | "toGlobal" | "isActive" | "get" | "listIndexForActive">;
  readonly collectives: Pick<CollectiveRunner, "runWith">;
  readonly p2p: Pick<P2P, "send" | "recv">;
  readonly metrics: Pick<Metrics, "op">;
}

/** routes/collective.ts: POST /collective/{op} (tensor bodies here, {"buffer": id} via buffers.ts). */
export interface CollectiveFacade extends BuffersFacade {
  readonly collectives: Pick<CollectiveRunner, "run" | "runWith">;
}

/** routes/p2p.ts: POST /p2p/send, /p2p/recv. */
export type P2pFacade = BuffersFacade;

/** routes/membership.ts: activation, deactivation, groups (changes go to the coordinator). */
export interface MembershipFacade {
  readonly rank: number;
  readonly phase: Phase;
  readonly participant?: Pick<Participant, "masterLost">;
  unavailable(): ApiError;
  toCoordinator(msg: Record<string, unknown>): Promise<Record<string, unknown>>;
  readonly membership: Pick<Membership, "defineGroup" | "allGroups" | "groupDef" | "isActive">;
}

/** routes/internal.ts: rendezvous on the coordinator, p2p offers, world following. */
export interface InternalFacade extends Readiness {
  readonly instance: string;
  readonly phase: Phase;
  readonly url: string;
  readonly isCoordinator: boolean;
  readonly rendezvous: Pick<RendezvousServer, "redirect" | "isComplete" | "register" | "table" | "ready"> | null;
  readonly membership: Pick<Membership, "get" | "coordinator" | "epoch">;
  readonly p2p: Pick<P2P, "offer">;
  notCoordinator(): Response;
  followWorld(url: string): boolean;
}

/** What the dashboard's snapshots read (dashboard/state.ts). */
export interface DashboardSource {
  readonly rank: number;
  readonly state: RankState;
  readonly phase: Phase;
  readonly ready: boolean;
  readonly startedAt: number;
  readonly membership: Pick<Membership, "onChange" | "view" | "toClusterJSON" | "epoch" | "worldSize">;
  readonly metrics: Pick<Metrics, "recentEntries">;
  readonly matcher: Pick<Matcher, "pending"> | null;
  readonly collectives?: Pick<CollectiveRunner, "inFlight">;
  deadReason(): string | null;
}

/** routes/dashboard.ts. */
export type DashboardFacade = DashboardSource;

/** routes/introspection.ts: /health, /livez, /cluster, /metrics, /debug/recent. */
export interface IntrospectionFacade extends CallerCheck {
  readonly rank: number;
  readonly ready: boolean;
  readonly state: RankState;
  readonly phase: Phase;
  readonly url: string;
  readonly startedAt: number;
  readonly failure: string | null;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly authMode: string;
  readonly config: Pick<ServiceConfig, "device">;
  readonly participant?: Pick<Participant, "masterLost">;
  readonly membership: Pick<Membership, "get" | "worldSize" | "epoch" | "toClusterJSON">;
  readonly dataPlane?: Pick<DataPlane, "dataPort" | "traffic">;
  readonly coordinator: Pick<Coordinator, "stats"> | null;
  readonly matcher: Pick<Matcher, "pending" | "pendingCount"> | null;
  readonly p2p: Pick<P2P, "pending">;
  /** Collective and p2p calls admitted and not answered yet (each took its place in line on arrival). */
  readonly callsInFlight: number;
  readonly metrics: Pick<Metrics, "render" | "recentEntries">;
  readonly log: Pick<Logger, "warn">;
  securityWarning(): string | null;
  deadReason(): string | null;
  dataPlaneLinks(): ReturnType<NonNullable<DataPlane["links"]>> | undefined;
  failoverLog(): unknown[];
}

/** routes/debug.ts: test hooks. */
export interface DebugFacade {
  readonly log: Pick<Logger, "warn">;
}

/** app.ts: every route's view, plus what auth and error mapping use. */
export type AppFacade = CollectiveFacade &
  P2pFacade &
  MembershipFacade &
  InternalFacade &
  DashboardFacade &
  IntrospectionFacade &
  DebugFacade & {
    readonly metrics: Pick<Metrics, "error" | "httpRequest">;
    readonly log: Pick<Logger, "error">;
  };
