// nccl-tests semantics of the benchmark: busbw factors, per-op shapes, the table and the JSON
// record, against hand-computed values.
import { describe, expect, test } from "bun:test";
import {
  algbwGBps,
  busFactor,
  defaultIters,
  formatTimeUs,
  jsonLine,
  makeResult,
  pointShape,
  sizeSteps,
  summarize,
  tableFooter,
  tableHeader,
  tableRow,
  type BenchResult,
} from "../../src/bench/spec";

describe("busbw factors (nccl-tests)", () => {
  test("allreduce 2(n-1)/n", () => {
    expect(busFactor("allreduce", 2)).toBe(1);
    expect(busFactor("allreduce", 4)).toBe(1.5);
    expect(busFactor("allreduce", 8)).toBe(1.75);
    expect(busFactor("allreduce", 1)).toBe(0);
  });
  test("allgather, reduce_scatter, alltoall, gather, scatter (n-1)/n", () => {
    for (const op of ["allgather", "reduce_scatter", "alltoall", "gather", "scatter"] as const) {
      expect(busFactor(op, 2)).toBe(0.5);
      expect(busFactor(op, 4)).toBe(0.75);
      expect(busFactor(op, 8)).toBe(0.875);
    }
  });
  test("broadcast, reduce, sendrecv 1", () => {
    for (const op of ["broadcast", "reduce", "sendrecv"] as const) {
      expect(busFactor(op, 2)).toBe(1);
      expect(busFactor(op, 16)).toBe(1);
    }
  });
});

describe("point shapes", () => {
  test("allreduce/broadcast/reduce: the whole tensor per rank", () => {
    expect(pointShape("allreduce", 1024, 2, 4)).toEqual({ bytes: 1024, count: 256, sendElems: 256, recvElems: 256, part: 256 });
    expect(pointShape("broadcast", 10, 4, 4)).toEqual({ bytes: 8, count: 2, sendElems: 2, recvElems: 2, part: 2 });
    expect(pointShape("reduce", 8, 2, 8)).toEqual({ bytes: 8, count: 1, sendElems: 1, recvElems: 1, part: 1 });
  });
  test("allgather: size is the total, count the per-rank part", () => {
    expect(pointShape("allgather", 1024, 4, 4)).toEqual({ bytes: 1024, count: 64, sendElems: 64, recvElems: 256, part: 64 });
    // 256 floats over 3 ranks: 85 each, reported size 85*3*4 = 1020 (nccl-tests rounds down)
    expect(pointShape("allgather", 1024, 3, 4)).toEqual({ bytes: 1020, count: 85, sendElems: 85, recvElems: 255, part: 85 });
  });
  test("reduce_scatter, scatter, alltoall, gather", () => {
    expect(pointShape("reduce_scatter", 4096, 2, 4)).toEqual({ bytes: 4096, count: 512, sendElems: 1024, recvElems: 512, part: 512 });
    expect(pointShape("scatter", 4096, 4, 2)).toEqual({ bytes: 4096, count: 512, sendElems: 2048, recvElems: 512, part: 512 });
    expect(pointShape("alltoall", 64, 2, 4)).toEqual({ bytes: 64, count: 8, sendElems: 16, recvElems: 16, part: 8 });
    expect(pointShape("gather", 64, 8, 4)).toEqual({ bytes: 64, count: 2, sendElems: 2, recvElems: 16, part: 2 });
  });
  test("too small to split: count 0", () => {
    expect(pointShape("allgather", 4, 2, 4).count).toBe(0);
    expect(pointShape("alltoall", 8, 4, 4).bytes).toBe(0);
  });
});

describe("sizes and iterations", () => {
  test("doubling from min to max", () => {
    expect(sizeSteps(8, 64)).toEqual([8, 16, 32, 64]);
    expect(sizeSteps(8, 100)).toEqual([8, 16, 32, 64]);
    expect(sizeSteps(3, 3)).toEqual([3]);
    expect(sizeSteps(1 << 20, 64 << 20).length).toBe(7);
  });
  test("default iterations follow mpi_bench.c", () => {
    expect(defaultIters(8)).toBe(200);
    expect(defaultIters(1 << 20)).toBe(200);
    expect(defaultIters((1 << 20) * 2)).toBe(20);
    expect(defaultIters(16 << 20)).toBe(20);
    expect(defaultIters(64 << 20)).toBe(5);
  });
});

describe("results", () => {
  test("algbw = bytes / time, in GB/s (1e9)", () => {
    expect(algbwGBps(1e9, 1e6)).toBe(1);
    expect(algbwGBps(1048576, 20)).toBeCloseTo(52.4288, 10);
  });
  test("summarize: mean, percentiles, min", () => {
    const s = summarize([30, 10, 20, 40]);
    expect(s.mean).toBe(25);
    expect(s.min).toBe(10);
    expect(s.p50).toBe(30); // floor(4 * 0.5) = index 2 of [10,20,30,40]
    expect(s.p99).toBe(40);
  });
  test("makeResult: mean time, busbw with the factor, rounding", () => {
    const shape = pointShape("allreduce", 1 << 20, 4, 4);
    const r = makeResult({ op: "allreduce", shape, dtype: "float32", redop: "sum", root: 0, nranks: 4, via: "native", timesUs: [10, 20, 30], wrong: 0 });
    expect(r.time_us).toBe(20);
    expect(r.algbw_gbps).toBe(52.429); // 1048576 B / 20 us
    expect(r.busbw_gbps).toBe(78.643); // x 1.5
    expect(r.count).toBe(262144);
    expect(r.root).toBe(-1);
    expect(r.redop).toBe("sum");
    expect(r.iters).toBe(3);
    const ag = makeResult({ op: "allgather", shape: pointShape("allgather", 1 << 20, 2, 4), dtype: "float32", redop: "sum", root: 0, nranks: 2, via: "native", timesUs: [100], wrong: null });
    expect(ag.redop).toBeNull();
    expect(ag.algbw_gbps).toBe(10.486);
    expect(ag.busbw_gbps).toBe(5.2429);
    const bc = makeResult({ op: "broadcast", shape: pointShape("broadcast", 1000, 2, 4), dtype: "float32", redop: "sum", root: 1, nranks: 2, via: "native", timesUs: [1], wrong: 0 });
    expect(bc.root).toBe(1);
    expect(bc.busbw_gbps).toBe(1);
  });
  test("JSON line: the contract's fields, with the right types", () => {
    const r = makeResult({ op: "allreduce", shape: pointShape("allreduce", 8, 2, 4), dtype: "float32", redop: "sum", root: 0, nranks: 2, via: "native", timesUs: [4], wrong: 0 });
    const o = JSON.parse(jsonLine(r)) as Record<string, unknown>;
    expect(Object.keys(o).slice(0, 8)).toEqual(["op", "bytes", "count", "dtype", "time_us", "algbw_gbps", "busbw_gbps", "wrong"]);
    expect(o).toMatchObject({ op: "allreduce", bytes: 8, count: 2, dtype: "float32", time_us: 4, algbw_gbps: 0.002, busbw_gbps: 0.002, wrong: 0 });
    const tiny = makeResult({ op: "allreduce", shape: pointShape("allreduce", 8, 2, 4), dtype: "float32", redop: "sum", root: 0, nranks: 2, via: "native", timesUs: [1234], wrong: 0 });
    expect(tiny.busbw_gbps).toBe(0.0000064830); // 5 significant digits, not rounded to 0
    expect(jsonLine(r)).not.toContain("\n");
  });
});

describe("the nccl-tests table", () => {
  const row = (over: Partial<BenchResult>): BenchResult => ({
    ...makeResult({ op: "allreduce", shape: pointShape("allreduce", 1 << 20, 2, 4), dtype: "float32", redop: "sum", root: 0, nranks: 2, via: "native", timesUs: [123.456], wrong: 0 }),
    ...over,
  });
  const GROUP = ["time", "algbw", "busbw", "#wrong"];
  test("header: nccl-tests' out-of-place and in-place column groups, names and units", () => {
    const [titles, names, units] = tableHeader();
    for (const l of [titles!, names!, units!]) expect(l.startsWith("#")).toBe(true);
    expect(titles!.slice(1).trim().split(/\s+/)).toEqual(["out-of-place", "in-place"]);
    expect(names!.slice(1).trim().split(/\s+/)).toEqual(["size", "count", "type", "redop", "root", ...GROUP, ...GROUP]);
    expect(units!.slice(1).trim().split(/\s+/)).toEqual(["(B)", "(elements)", "(us)", "(GB/s)", "(GB/s)", "(us)", "(GB/s)", "(GB/s)"]);
    // each group title sits over its group
    const at = (l: string, word: string, from = 0) => l.indexOf(word, from);
    expect(at(titles!, "out-of-place")).toBeGreaterThan(at(names!, "root"));
    expect(at(titles!, "out-of-place")).toBeLessThan(at(names!, "#wrong"));
    expect(at(titles!, "in-place")).toBeGreaterThan(at(names!, "#wrong"));
  });
  test("a row: both groups, values right-aligned under the headers", () => {
    const r = tableRow(row({ in_place: { time_us: 99.5, algbw_gbps: 10.54, busbw_gbps: 10.54, wrong: 0 } }));
    expect(r.trim().split(/\s+/)).toEqual(["1048576", "262144", "float32", "sum", "-1", "123.5", "8.49", "8.49", "0", "99.50", "10.54", "10.54", "0"]);
    // every column ends where its header ends
    const [, names] = tableHeader();
    const ends = (s: string) => [...s.matchAll(/\S+/g)].map((m) => m.index! + m[0].length);
    expect(ends(r)).toEqual(ends(names!).slice(1)); // the first token of the header is "#"
  });
  test("unchecked results print N/A, ops without a redop print none, rooted ops their root, no in-place form N/A", () => {
    const r = tableRow(row({ op: "broadcast", redop: null, root: 1, wrong: null, time_us: 12345.6, in_place: null }));
    expect(r.trim().split(/\s+/)).toEqual(["1048576", "262144", "float32", "none", "1", "12346", "8.49", "8.49", "N/A", "N/A", "N/A", "N/A", "N/A"]);
  });
  test("sizes step by a factor (-f) or by bytes (-i)", () => {
    expect(sizeSteps(8, 1024, 4)).toEqual([8, 32, 128, 512]);
    expect(sizeSteps(8, 8192, 10)).toEqual([8, 80, 800, 8000]);
    expect(sizeSteps(100, 400, 2, 100)).toEqual([100, 200, 300, 400]);
    expect(sizeSteps(1, 1 << 30, 2, 1).length).toBe(4096); // bounded
  });
  test("time decimals shrink as time grows", () => {
    expect(formatTimeUs(5.123)).toBe("5.12");
    expect(formatTimeUs(512.34)).toBe("512.3");
    expect(formatTimeUs(51234.5)).toBe("51235");
  });
  test("footer: wrong-value verdict and average busbw", () => {
    expect(tableFooter([row({ busbw_gbps: 2 }), row({ busbw_gbps: 4 })])).toEqual(["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 3.0000"]);
    expect(tableFooter([row({ wrong: 3 })])[0]).toBe("# Out of bounds values : 3 FAILED");
    expect(tableFooter([row({ wrong: null })])[0]).toBe("# Out of bounds values : not checked");
    // both groups count: nccl-tests averages busbw over out-of-place and in-place
    expect(tableFooter([row({ busbw_gbps: 2, in_place: { time_us: 1, algbw_gbps: 6, busbw_gbps: 6, wrong: 2 } })])).toEqual(["# Out of bounds values : 2 FAILED", "# Avg bus bandwidth    : 4.0000"]);
  });
});
