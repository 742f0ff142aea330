// `moonring bench`: flags -> RunConfig -> runner -> nccl-tests table / JSON lines / SVG chart.
// src/cli.ts dispatches here (benchMain).
import { basename } from "node:path";
import { dtypeNames, redopNames, redopRejection, type DTypeName, type RedOpName } from "../ops/table";
import { bytesFlag, helpText, intFlag, parseFlags, UsageError, type FlagSpec } from "../util/args";
import { parseRecords, renderSvg, seriesFromRuns, sizeLabel } from "./plot";
import type { CheckMode, SyncMode } from "./protocol";
import { makeRunner, runBench, type RunConfig, type Sink } from "./runner";
import { BENCH_OPS, isBenchOp, isRooted, jsonLine, sizeSteps, tableFooter, tableHeader, tableRow, type BenchOp, type BenchResult } from "./spec";
import { WORLD_SIZE_MAX } from "../limits";

export const BENCH_FLAGS: Record<string, FlagSpec> = {
  nproc: { type: "string", help: "number of ranks (processes) on this host" },
  op: { type: "string", help: `op, or a comma list, or "all": ${BENCH_OPS.join(", ")}` },
  "min-bytes": { type: "string", help: "smallest size (default 8; 1K, 4M, ... accepted)" },
  "max-bytes": { type: "string", help: "largest size (default 64M); sizes double from min to max" },
  sizes: { type: "string", help: "exactly these sizes instead of min..max, e.g. 8,1M,64M" },
  "step-factor": { type: "string", help: "multiply the size by this from min to max (default 2; nccl-tests -f)" },
  "step-bytes": { type: "string", help: "add this many bytes from min to max instead of multiplying (nccl-tests -i)" },
  "check-iters": { type: "string", help: "nccl-tests -c: 0 no check, 1 one checked iteration (default), more: every iteration" },
  "no-in-place": { type: "boolean", help: "time out of place only (the in-place columns print N/A)" },
  dtype: { type: "string", help: "element type (default float32)" },
  redop: { type: "string", help: "reduce op for allreduce/reduce/reduce_scatter (default sum)" },
  root: { type: "string", help: "root of broadcast/reduce/gather/scatter (default 0)" },
  iters: { type: "string", help: "timed iterations per size (default: 200 up to 1 MiB, 20 up to 16 MiB, 5 above, like the Open MPI peer)" },
  warmup: { type: "string", help: "untimed iterations per size (default 5)" },
  device: { type: "string", help: "cpu or cuda (default cpu)" },
  via: { type: "string", help: "native: worker processes drive the data plane directly (default); rest: `launch` rank services timed over HTTP" },
  "rest-mode": {
    type: "string",
    help: "via rest: body (tensors in request bodies), shm (shared buffers the bench maps), or all (default: native, HTTP echo, body and shm for each point, one table with the ratios)",
  },
  transport: { type: "string", help: "data-plane transport between the ranks: tcp, shm, verbs (RDMA; MOONRING_VERBS_LIB picks a verbs library other than libibverbs.so.1) or auto (default auto; sets MOONRING_TRANSPORT)" },
  sync: { type: "string", help: "barrier: barrier before every timed iteration, slowest rank per iteration (default, like mpi_bench.c); none: back to back, like nccl-tests" },
  check: { type: "boolean", help: "verify every iteration's result (outside the timed region); default: one verified extra iteration per size" },
  "no-check": { type: "boolean", help: "do not verify results (#wrong N/A)" },
  json: { type: "boolean", help: "one JSON object per size instead of the table" },
  plot: { type: "string", help: "write a busbw-vs-size SVG chart: of this run, or of the JSON files given as arguments" },
  title: { type: "string", help: "chart title (--plot)" },
  host: { type: "string", help: "loopback address ranks bind (default 127.0.0.1)" },
  "timeout-ms": { type: "string", help: "deadline of each op (default 60000)" },
  quiet: { type: "boolean", help: "no progress line on stderr" },
  help: { type: "boolean", help: "show this help" },
};

/**
 * nccl-tests' flags (all_reduce_perf -b 8 -e 128M -f 2 -g 4 -n 20 -w 5 -c 1): short ones,
 * "-b 8" or "-b8", and their long spellings, mapped onto bench's own. -g (GPUs per process
 * there) is the number of ranks here: one rank per GPU.
 */
const NCCL_SHORT: Record<string, string> = {
  b: "min-bytes",
  e: "max-bytes",
  f: "step-factor",
  i: "step-bytes",
  g: "nproc",
  n: "iters",
  w: "warmup",
  c: "check-iters",
  o: "redop",
  d: "dtype",
  r: "root",
};
const NCCL_LONG: Record<string, string> = {
  minbytes: "min-bytes",
  maxbytes: "max-bytes",
  stepfactor: "step-factor",
  stepbytes: "step-bytes",
  ngpus: "nproc",
  warmup_iters: "warmup",
  datatype: "dtype",
};
/** nccl-tests' type names -> ours (the rest are spelled alike). */
const NCCL_DTYPES: Record<string, string> = { half: "float16", float: "float32", double: "float64", int: "int32", char: "int8" };

/** Rewrites nccl-tests' flags into bench's long ones; everything else passes through. */
export function ncclArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const short = /^-([a-zA-Z])(.*)$/.exec(a);
    const long = /^--([a-z_]+)(?:=(.*))?$/.exec(a);
    let name: string | undefined;
    let value: string | undefined;
    if (short && !a.startsWith("--")) {
      name = NCCL_SHORT[short[1]!];
      if (!name) throw new UsageError(`unknown flag ${a} (nccl-tests' -b -e -f -i -g -n -w -c -o -d -r are understood)`);
      value = short[2] !== "" ? short[2] : argv[++i];
      if (value === undefined) throw new UsageError(`${a} needs a value`);
    } else if (long && NCCL_LONG[long[1]!]) {
      name = NCCL_LONG[long[1]!];
      value = long[2] ?? argv[++i];
      if (value === undefined) throw new UsageError(`--${long[1]} needs a value`);
    } else {
      out.push(a);
      continue;
    }
    if (name === "dtype") value = NCCL_DTYPES[value!] ?? value;
    out.push(`--${name}`, value!);
  }
  return out;
}

const USAGE = `Usage: moonring bench --nproc N --op OP [--min-bytes B] [--max-bytes B] [--dtype float32] [--redop sum]
                      [--root R] [--iters K] [--warmup W] [--device cpu|cuda] [--via native|rest] [--check]
                      [--json] [--plot FILE.svg] [--transport tcp|shm|verbs|auto]
       moonring bench --op allreduce -b 8 -e 128M -f 2 -g 4 -n 20 -w 5 -c 1    (nccl-tests' flags)
       moonring bench --plot FILE.svg RUN.json [RUN2.json ...]

Times OP over sizes doubling from min to max and prints nccl-tests' table:
size(B) count type redop root time(us) algbw(GB/s) busbw(GB/s) #wrong. Sizes of allgather, gather,
scatter, reduce_scatter and alltoall are totals (n x the per-rank part, count = the part), as in
nccl-tests; busbw = algbw x 2(n-1)/n (allreduce), (n-1)/n (allgather, reduce_scatter, alltoall,
gather, scatter), 1 (broadcast, reduce, sendrecv). sendrecv: every rank sends to rank+1 and
receives from rank-1 at once. time = per iteration the slowest rank, mean over iterations.
Like nccl-tests, every point runs out of place and then in place (recv = send for allreduce,
reduce, broadcast; send = recv + rank's block for allgather, gather; recv = send + rank's block
for reduce_scatter, scatter; alltoall and sendrecv: N/A), each its own column group.`;

function choice<T extends string>(v: string | boolean | undefined, name: string, options: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (typeof v !== "string" || !(options as readonly string[]).includes(v)) {
    throw new UsageError(`--${name} must be one of ${options.join(", ")}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}

export function parseBenchArgs(argv: string[]): { cfg: RunConfig | null; json: boolean; plot?: string; title?: string; files: string[]; quiet: boolean; help: boolean } {
  const { flags, rest } = parseFlags(ncclArgs(argv), BENCH_FLAGS);
  const json = flags.json === true;
  const plot = flags.plot as string | undefined;
  const title = flags.title as string | undefined;
  const quiet = flags.quiet === true;
  if (flags.help) return { cfg: null, json, plot, title, files: rest, quiet, help: true };
  if (rest.length > 0 && plot === undefined) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])} (JSON files are for --plot)`);
  if (plot !== undefined && rest.length > 0) {
    if (flags.nproc !== undefined) throw new UsageError("--plot with JSON files draws those runs; leave out --nproc");
    return { cfg: null, json, plot, title, files: rest, quiet, help: false };
  }
  const nproc = intFlag(flags.nproc, "nproc", { min: 1, max: WORLD_SIZE_MAX });
  if (nproc === undefined) throw new UsageError("bench needs --nproc N");
  const opText = flags.op;
  if (typeof opText !== "string") throw new UsageError(`bench needs --op (${BENCH_OPS.join(", ")}, or all)`);
  const ops = opText === "all" ? BENCH_OPS.filter((o) => o !== "barrier") : opText.split(",").map((s) => s.trim());
  for (const o of ops) if (!isBenchOp(o)) throw new UsageError(`unknown op ${JSON.stringify(o)} (${BENCH_OPS.join(", ")})`);
  if (nproc === 1 && ops.includes("sendrecv")) throw new UsageError("sendrecv needs --nproc 2 or more (each rank sends to the next)");
  const sizeList = typeof flags.sizes === "string" ? flags.sizes.split(",").map((x) => bytesFlag(x.trim(), "sizes")!) : null;
  if (sizeList && (flags["min-bytes"] !== undefined || flags["max-bytes"] !== undefined)) throw new UsageError("--sizes replaces --min-bytes/--max-bytes");
  if (sizeList?.some((x) => !(x >= 1))) throw new UsageError("--sizes: every size must be >= 1");
  const minBytes = bytesFlag(flags["min-bytes"], "min-bytes") ?? 8;
  const maxBytes = bytesFlag(flags["max-bytes"], "max-bytes") ?? 64 << 20;
  if (minBytes < 1) throw new UsageError("--min-bytes must be >= 1");
  if (maxBytes < minBytes) throw new UsageError(`--max-bytes ${maxBytes} is below --min-bytes ${minBytes}`);
  const dtype = choice(flags.dtype, "dtype", dtypeNames, "float32") as DTypeName;
  const redop = choice(flags.redop, "redop", redopNames, dtype === "bool" ? "bor" : "sum") as RedOpName;
  if ((ops as BenchOp[]).some((o) => o === "allreduce" || o === "reduce" || o === "reduce_scatter")) {
    const why = redopRejection(redop, dtype);
    if (why) throw new UsageError(why);
  }
  const root = intFlag(flags.root, "root", { min: 0, max: nproc - 1 }) ?? 0;
  if (root !== 0 && !(ops as BenchOp[]).some(isRooted)) throw new UsageError(`--root is for broadcast, reduce, gather, scatter`);
  if (flags.check && flags["no-check"]) throw new UsageError("--check and --no-check exclude each other");
  const checkIters = intFlag(flags["check-iters"], "check-iters", { min: 0 });
  if (checkIters !== undefined && (flags.check || flags["no-check"])) throw new UsageError("-c (--check-iters) and --check / --no-check exclude each other");
  const check: CheckMode =
    checkIters !== undefined ? (checkIters === 0 ? "none" : checkIters === 1 ? "once" : "every") : flags.check ? "every" : flags["no-check"] ? "none" : "once";
  const stepFactor = intFlag(flags["step-factor"], "step-factor", { min: 2 });
  const stepBytes = bytesFlag(flags["step-bytes"], "step-bytes");
  if (stepFactor !== undefined && stepBytes !== undefined) throw new UsageError("-f (--step-factor) and -i (--step-bytes) exclude each other");
  if (stepBytes !== undefined && stepBytes < 1) throw new UsageError("-i (--step-bytes) must be >= 1");
  const via = choice(flags.via, "via", ["native", "rest"] as const, "native");
  const sync = choice(flags.sync, "sync", ["barrier", "none"] as const, "barrier") as SyncMode;
  if (via === "rest" && sync === "none") throw new UsageError("--sync none is for --via native (REST iterations are timed one by one)");
  const restMode = choice(flags["rest-mode"], "rest-mode", ["body", "shm", "all"] as const, "all");
  if (flags["rest-mode"] !== undefined && via !== "rest") throw new UsageError("--rest-mode is for --via rest");
  const cfg: RunConfig = {
    restMode,
    nproc,
    ops: ops as BenchOp[],
    sizes: sizeList ?? sizeSteps(minBytes, maxBytes, stepFactor ?? 2, stepBytes),
    dtype,
    redop,
    root,
    iters: intFlag(flags.iters, "iters", { min: 1 }),
    warmup: intFlag(flags.warmup, "warmup", { min: 0 }) ?? 5,
    check,
    sync,
    device: choice(flags.device, "device", ["cpu", "cuda"] as const, "cpu"),
    via,
    transport: choice(flags.transport, "transport", ["tcp", "shm", "verbs", "auto"] as const, (process.env.MOONRING_TRANSPORT as "tcp" | "shm" | "verbs" | "auto" | undefined) ?? "auto"),
    host: (flags.host as string | undefined) ?? "127.0.0.1",
    timeoutMs: intFlag(flags["timeout-ms"], "timeout-ms", { min: 1 }) ?? 60_000,
    inPlace: flags["no-in-place"] !== true,
  };
  return { cfg, json, plot, title, files: rest, quiet, help: false };
}

function tableSink(cfg: RunConfig, json: boolean, quiet: boolean, label: string): Sink {
  const out = (s: string) => process.stdout.write(s + "\n");
  const tty = process.stderr.isTTY === true;
  let progressShown = false;
  const clearProgress = () => {
    if (tty && progressShown) process.stderr.write("\r\x1b[K");
    progressShown = false;
  };
  const iters = cfg.iters !== undefined ? String(cfg.iters) : "200/20/5 (<=1M/<=16M/above)";
  return {
    beginOp(op) {
      if (json) return;
      out(`# moonring bench: ${op}, ${cfg.nproc} ranks ${label}, ${cfg.device}`);
      out(`#   sizes ${sizeLabel(cfg.sizes[0]!)}B..${sizeLabel(cfg.sizes[cfg.sizes.length - 1]!)}B (${cfg.sizes.length} points), iters ${iters}, warmup ${cfg.warmup}, sync ${cfg.sync}, check ${cfg.check}`);
      out("#");
      for (const l of tableHeader()) out(l);
    },
    result(r) {
      clearProgress();
      out(json ? jsonLine(r) : tableRow(r));
    },
    endOp(_op, rows) {
      clearProgress();
      if (json) return;
      for (const l of tableFooter(rows)) out(l);
      out("#");
    },
    progress(op, size, i, total) {
      if (quiet) return;
      const text = `bench: ${op} ${op === "barrier" ? "" : `${sizeLabel(size)}B `}(${i + 1}/${total}) ${label}`;
      if (tty) {
        process.stderr.write(`\r\x1b[K${text}`);
        progressShown = true;
      } else process.stderr.write(text + "\n");
    },
  };
}

async function plotFiles(plot: string, files: string[], title?: string): Promise<void> {
  const runs = await Promise.all(files.map(async (f) => ({ name: basename(f).replace(/\.(json|jsonl|txt)$/, ""), records: parseRecords(await Bun.file(f).text()) })));
  for (const r of runs) if (r.records.length === 0) throw new UsageError(`${r.name}: no benchmark records (JSON lines with op, bytes, busbw_gbps) found`);
  await Bun.write(plot, renderSvg(seriesFromRuns(runs), { title }));
}

export async function benchMain(argv: string[]): Promise<number> {
  const a = parseBenchArgs(argv);
  if (a.help) {
    console.log(helpText(USAGE, BENCH_FLAGS));
    return 0;
  }
  if (!a.cfg) {
    await plotFiles(a.plot!, a.files, a.title);
    process.stderr.write(`bench: wrote ${a.plot}\n`);
    return 0;
  }
  const cfg = a.cfg;
  if (cfg.via === "rest" && cfg.restMode === "all") {
    const { runCompare } = await import("./compare");
    const results = await runCompare(cfg, a.json, a.quiet);
    return results.some((r) => (r.wrong ?? 0) > 0) ? 3 : 0;
  }
  const runner = await makeRunner(cfg);
  const stopOnSignal = () => {
    void runner.stop().finally(() => process.exit(130));
  };
  process.once("SIGINT", stopOnSignal);
  process.once("SIGTERM", stopOnSignal);
  let results: BenchResult[];
  try {
    results = await runBench(cfg, runner, tableSink(cfg, a.json, a.quiet, runner.label));
  } catch (e) {
    process.stderr.write(`\nmoonring bench: ${(e as Error).message}\n`);
    return 1;
  } finally {
    process.off("SIGINT", stopOnSignal);
    process.off("SIGTERM", stopOnSignal);
  }
  if (a.plot) {
    const series = seriesFromRuns([{ name: "run", records: results as never }]);
    await Bun.write(a.plot, renderSvg(series, { title: a.title ?? `moonring ${cfg.ops.join(", ")}, ${cfg.nproc} ranks ${runner.label}` }));
    process.stderr.write(`bench: wrote ${a.plot}\n`);
  }
  const wrong = results.reduce((s, r) => s + (r.wrong ?? 0), 0);
  return wrong > 0 ? 3 : 0;
}
