// The benchmark loop shared by both ways of running ranks (native workers, REST services).
import type { DTypeName, RedOpName } from "../ops/table";
import type { CheckMode, SyncMode } from "./protocol";
import { hasInPlace, type BenchOp, type BenchResult } from "./spec";

export interface RunConfig {
  nproc: number;
  ops: BenchOp[];
  /** Requested sizes (each op's shape rounds them like nccl-tests). */
  sizes: number[];
  dtype: DTypeName;
  redop: RedOpName;
  root: number;
  /** Timed iterations; undefined = mpi_bench.c's schedule by size. */
  iters?: number;
  warmup: number;
  check: CheckMode;
  sync: SyncMode;
  device: "cpu" | "cuda";
  via: "native" | "rest";
  /** via rest: bodies, shared buffers, or all of them with the native and HTTP echo baselines. */
  restMode?: "body" | "shm" | "all";
  transport: "tcp" | "shm" | "verbs" | "auto";
  host: string;
  timeoutMs: number;
  /** Also time each point in place, as nccl-tests does (--no-in-place: N/A). */
  inPlace?: boolean;
}

export interface Runner {
  readonly label: string;
  start(): Promise<void>;
  /** One point; null when the size rounds to 0 elements for this op. inPlace: its in-place form. */
  point(op: BenchOp, size: number, inPlace?: boolean): Promise<BenchResult | null>;
  /** Whether point() can run in-place forms (else the in-place columns print N/A). */
  readonly inPlace?: boolean;
  stop(): Promise<void>;
}

export async function makeRunner(cfg: RunConfig): Promise<Runner> {
  if (cfg.via === "rest") {
    const { RestRunner } = await import("./rest");
    return new RestRunner(cfg);
  }
  const { NativeRunner } = await import("./native");
  return new NativeRunner(cfg);
}

export interface Sink {
  /** Before the first point of an op. */
  beginOp(op: BenchOp): void;
  result(r: BenchResult): void;
  endOp(op: BenchOp, rows: BenchResult[]): void;
  progress(op: BenchOp, size: number, index: number, total: number): void;
}

/** Runs every (op, size) point in order; returns all results. Always stops the runner. */
export async function runBench(cfg: RunConfig, runner: Runner, sink: Sink): Promise<BenchResult[]> {
  const all: BenchResult[] = [];
  await runner.start();
  try {
    for (const op of cfg.ops) {
      const sizes = op === "barrier" ? [0] : cfg.sizes;
      sink.beginOp(op);
      const rows: BenchResult[] = [];
      for (let i = 0; i < sizes.length; i++) {
        sink.progress(op, sizes[i]!, i, sizes.length);
        const r = await runner.point(op, sizes[i]!);
        if (!r) continue;
        r.in_place = null;
        if (cfg.inPlace !== false && runner.inPlace && hasInPlace(op)) {
          const ip = await runner.point(op, sizes[i]!, true);
          if (ip) r.in_place = { time_us: ip.time_us, algbw_gbps: ip.algbw_gbps, busbw_gbps: ip.busbw_gbps, wrong: ip.wrong };
        }
        rows.push(r);
        all.push(r);
        sink.result(r);
      }
      sink.endOp(op, rows);
    }
  } finally {
    await runner.stop();
  }
  return all;
}
