// What every REST-side runner (bodies, shared buffers, HTTP echo) does around one point: its
// shape, iteration count and check tables, and the result record with per-call percentiles.
import { tablesFor, type CheckContext, type Tables } from "./pattern";
import { defaultIters, itemBytes, makeResult, pointShape, summarize, type BenchOp, type BenchResult, type PointShape } from "./spec";
import type { RunConfig } from "./runner";

export interface RestPoint {
  n: number;
  isz: number;
  shape: PointShape;
  iters: number;
  tables: Tables;
  ctx: (rank: number) => CheckContext;
}

/** The point's setup; null when the size rounds to 0 elements for this op. */
export function restPoint(c: RunConfig, op: BenchOp, size: number): RestPoint | null {
  const n = c.nproc;
  const isz = itemBytes(c.dtype);
  const shape = pointShape(op, size, n, isz);
  if (op !== "barrier" && shape.count === 0) return null;
  return {
    n,
    isz,
    shape,
    iters: c.iters ?? defaultIters(shape.bytes),
    tables: tablesFor(c.dtype, c.redop, n),
    ctx: (r) => ({ op, dtype: c.dtype, redop: c.redop, n, rank: r, root: c.root, shape }),
  };
}

/** The record of a REST-side point: batch times (slowest rank) and single-call percentiles. */
export function restResult(c: RunConfig, op: BenchOp, p: RestPoint, mode: "body" | "shm" | "echo", timesUs: number[], callsUs: number[], wrong: number | null): BenchResult {
  const res = makeResult({ op, shape: p.shape, dtype: c.dtype, redop: c.redop, root: c.root, nranks: p.n, via: "rest", timesUs, wrong, transport: mode === "echo" ? undefined : c.transport, device: c.device });
  res.mode = mode;
  const per = summarize(callsUs);
  res.call_p50_us = Math.round(per.p50 * 100) / 100;
  res.call_p99_us = Math.round(per.p99 * 100) / 100;
  return res;
}
