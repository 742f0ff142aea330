// `moonring bench` flags -> run configuration, and the usage errors a typo gets.
import { describe, expect, test } from "bun:test";
import { parseBenchArgs } from "../../src/bench/cli";
import { UsageError } from "../../src/util/args";

const cfg = (argv: string[]) => parseBenchArgs(argv).cfg!;

describe("bench flags", () => {
  test("defaults: 8 B..64 MiB doubling, float32 sum, native, auto transport, one checked iteration", () => {
    const c = cfg(["--nproc", "2", "--op", "allreduce"]);
    expect(c.sizes[0]).toBe(8);
    expect(c.sizes.at(-1)).toBe(64 << 20);
    expect(c.sizes.length).toBe(24);
    expect(c).toMatchObject({ nproc: 2, ops: ["allreduce"], dtype: "float32", redop: "sum", root: 0, via: "native", check: "once", sync: "barrier", device: "cpu", warmup: 5 });
    expect(c.iters).toBeUndefined();
  });
  test("every flag", () => {
    const c = cfg(["--nproc", "4", "--op", "broadcast,gather", "--min-bytes", "1K", "--max-bytes", "1M", "--dtype", "bfloat16", "--root", "3", "--iters", "7", "--warmup", "0", "--via", "rest", "--check", "--transport", "tcp", "--device", "cuda"]);
    expect(c).toMatchObject({ nproc: 4, ops: ["broadcast", "gather"], dtype: "bfloat16", root: 3, iters: 7, warmup: 0, via: "rest", check: "every", transport: "tcp", device: "cuda" });
    expect(c.sizes).toEqual([1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576]);
    expect(cfg(["--nproc", "2", "--op", "all", "--no-check"]).ops).toEqual(["allreduce", "reduce", "broadcast", "allgather", "gather", "scatter", "reduce_scatter", "alltoall", "sendrecv"]);
    expect(cfg(["--nproc", "2", "--op", "all", "--no-check"]).check).toBe("none");
  });
  test("plot-only mode: --plot FILE with JSON files and no --nproc", () => {
    const a = parseBenchArgs(["--plot", "out.svg", "a.json", "b.json"]);
    expect(a.cfg).toBeNull();
    expect(a.plot).toBe("out.svg");
    expect(a.files).toEqual(["a.json", "b.json"]);
  });
  const bad: [string[], RegExp][] = [
    [["--op", "allreduce"], /--nproc/],
    [["--nproc", "2"], /--op/],
    [["--nproc", "2", "--op", "allreduce,bogus"], /unknown op "bogus"/],
    [["--nproc", "2", "--op", "allreduce", "--dtype", "float33"], /--dtype must be one of/],
    [["--nproc", "2", "--op", "allreduce", "--redop", "bxor"], /bxor is not defined for float/],
    [["--nproc", "2", "--op", "allreduce", "--dtype", "int32", "--redop", "avg"], /avg needs a floating dtype/],
    [["--nproc", "2", "--op", "broadcast", "--root", "2"], /--root must be <= 1/],
    [["--nproc", "2", "--op", "allreduce", "--root", "1"], /--root is for/],
    [["--nproc", "2", "--op", "allreduce", "--check", "--no-check"], /exclude each other/],
    [["--nproc", "2", "--op", "allreduce", "--min-bytes", "1M", "--max-bytes", "1K"], /below --min-bytes/],
    [["--nproc", "2", "--op", "allreduce", "--via", "grpc"], /--via must be one of native, rest/],
    [["--nproc", "2", "--op", "allreduce", "--via", "rest", "--sync", "none"], /--sync none is for --via native/],
    [["--nproc", "1", "--op", "sendrecv"], /sendrecv needs --nproc 2/],
    [["--nproc", "2", "--op", "allreduce", "stray.json"], /JSON files are for --plot/],
    [["--nproc", "2", "--op", "allreduce", "--bogus"], /unknown flag --bogus/],
  ];
  for (const [argv, re] of bad) {
    test(`usage error: ${argv.join(" ")}`, () => {
      let err: unknown;
      try {
        parseBenchArgs(argv);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UsageError);
      expect((err as Error).message).toMatch(re);
    });
  }
});
