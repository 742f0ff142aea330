// Messages between `bench --via native` (the parent) and its worker processes
// (src/bench/native-worker.ts): one JSON object per line, parent -> worker on stdin,
// worker -> parent on stdout. Workers never talk to each other except through the data plane.
import type { DTypeName, RedOpName } from "../ops/table";
import type { BenchOp } from "./spec";

export type CheckMode = "none" | "once" | "every";
/** barrier: a data-plane barrier before every iteration, each iteration timed alone (like mpi_bench.c);
 *  none: iterations back to back, total / iters (like nccl-tests). */
export type SyncMode = "barrier" | "none";

export interface PeerInfo {
  rank: number;
  host: string;
  port: number;
  hostId: string;
}

export type ParentMsg =
  | { cmd: "peers"; peers: PeerInfo[] }
  | {
      cmd: "point";
      op: BenchOp;
      dtype: DTypeName;
      redop: RedOpName;
      root: number;
      /** Requested size; the worker derives the shape exactly as the parent does. */
      size: number;
      iters: number;
      warmup: number;
      check: CheckMode;
      sync: SyncMode;
      timeoutMs: number;
      /** The in-place form (spec.ts hasInPlace); absent: out of place. */
      inPlace?: boolean;
    }
  | { cmd: "exit" };

export type WorkerMsg =
  | { ev: "ready"; rank: number; dataPort: number; hostId: string; pid: number }
  | { ev: "peered"; rank: number }
  | {
      ev: "point";
      rank: number;
      /** µs per timed iteration (sync barrier), or one entry: total µs / iters (sync none). */
      timesUs: number[];
      /** Wrong elements on this rank; null when not checked. */
      wrong: number | null;
    }
  | { ev: "error"; rank: number; message: string; code?: string };

export function parseLine<T>(line: string): T | null {
  const s = line.trim();
  if (!s.startsWith("{")) return null;
  try {
    return JSON.parse(s) as T;
  } catch {
    return null;
  }
}
