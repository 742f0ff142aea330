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
  test("nccl-tests' flags: -b -e -f -g -n -w -c (and -i -o -d -r), '-b 8' or '-b8'", () => {
    const c = cfg(["--op", "allreduce", "-b", "8", "-e", "128M", "-f", "4", "-g", "4", "-n", "20", "-w", "3", "-c", "1"]);
    expect(c).toMatchObject({ nproc: 4, iters: 20, warmup: 3, check: "once" });
    expect(c.sizes).toEqual([8, 32, 128, 512, 2048, 8192, 32768, 131072, 524288, 2097152, 8388608, 33554432, 134217728]);
    expect(cfg(["--op", "allreduce", "-b8", "-e64", "-g2"]).sizes).toEqual([8, 16, 32, 64]);
    expect(cfg(["--op", "allreduce", "-g", "2", "-c", "0"]).check).toBe("none");
    expect(cfg(["--op", "allreduce", "-g", "2", "-c", "5"]).check).toBe("every");
    expect(cfg(["--op", "allreduce", "-g", "2", "-b", "1K", "-e", "4K", "-i", "1K"]).sizes).toEqual([1024, 2048, 3072, 4096]);
    expect(cfg(["--op", "reduce", "-g", "2", "-o", "max", "-d", "half", "-r", "1"])).toMatchObject({ redop: "max", dtype: "float16", root: 1 });
    expect(cfg(["--op", "allreduce", "--ngpus", "2", "--minbytes=1K", "--maxbytes", "2K", "--stepfactor", "2", "--warmup_iters", "0"])).toMatchObject({ nproc: 2, warmup: 0, sizes: [1024, 2048] });
    expect(cfg(["--op", "allreduce", "-g", "2"]).inPlace).toBe(true);
    expect(cfg(["--op", "allreduce", "-g", "2", "--no-in-place"]).inPlace).toBe(false);
  });
  test("--sizes: exactly those sizes; --via rest runs every REST mode unless --rest-mode says one", () => {
    const c = cfg(["--nproc", "2", "--op", "allreduce", "--via", "rest", "--sizes", "8,1M,64M"]);
    expect(c.sizes).toEqual([8, 1 << 20, 64 << 20]);
    expect(c.restMode).toBe("all");
    expect(cfg(["--nproc", "2", "--op", "allreduce", "--via", "rest", "--rest-mode", "shm"]).restMode).toBe("shm");
  });
  test("plot-only mode: --plot FILE with JSON files and no --nproc", () => {
    const a = parseBenchArgs(["--plot", "out.svg", "a.json", "b.json"]);
    expect(a.cfg).toBeNull();
    expect(a.plot).toBe("out.svg");
    expect(a.files).toEqual(["a.json", "b.json"]);
  });
  const bad: [string[], RegExp][] = [
    [["--op", "allreduce"], /--nproc/],
    [["--op", "allreduce", "-g", "2", "-f", "1"], /--step-factor/],
    [["--op", "allreduce", "-g", "2", "-f", "2", "-i", "8"], /exclude each other/],
    [["--op", "allreduce", "-g", "2", "-c", "1", "--check"], /exclude each other/],
    [["--op", "allreduce", "-g", "2", "-x", "1"], /unknown flag -x/],
    [["--op", "allreduce", "-g"], /-g needs a value/],
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
    [["--nproc", "2", "--op", "allreduce", "--sizes", "8,1M", "--max-bytes", "2M"], /--sizes replaces/],
    [["--nproc", "2", "--op", "allreduce", "--rest-mode", "shm"], /--rest-mode is for --via rest/],
    [["--nproc", "2", "--op", "allreduce", "--via", "rest", "--rest-mode", "mmap"], /--rest-mode must be one of/],
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
