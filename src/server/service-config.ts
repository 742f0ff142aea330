// A rank service's configuration (serve and launch build it; tests build their own) and its defaults.
import type { LocalRank } from "../util/local-rank";
import type { DataPlaneFactory } from "./dataplane";

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
  /**
   * REST callers on this host running as this process's user need no token (launch's per-job
   * secret: MOONRING_LOCAL_USER_AUTH=1); everyone else needs it. The data plane always does.
   */
  localUserAuth?: boolean;
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
  /** serve --rendezvous etcd://...: rendezvous, leadership and epochs in etcd (absent: built-in; control/etcd-store.ts). */
  etcd?: { endpoints: string[]; job: string };
  /** Tests inject a fake; the real service uses src/native/engine.ts. */
  dataPlaneFactory?: DataPlaneFactory;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_MAX_TENSOR_BYTES = 512 * 1024 * 1024;
/** Each pending call may wait for its peers up to its timeout_ms, holding its body's memory. */
export const DEFAULT_MAX_PENDING_CALLS = 1024;
