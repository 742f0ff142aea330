// End to end: `moonring bench --via native --check` at 2 ranks on small sizes, every op; every
// result verified against the reference (#wrong 0), JSON records complete. Skipped when the
// native library or src/native/engine.ts is missing. No timing assertions.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";

const ROOT = new URL("../../", import.meta.url).pathname;
const CLI = `${ROOT}src/cli.ts`;
const haveEngine = existsSync(`${ROOT}src/native/engine.ts`) && existsSync(process.env.MOONRING_LIB || `${ROOT}zig/zig-out/lib/libmoonring.so`);

async function bench(args: string[]): Promise<{ code: number; records: Record<string, unknown>[]; out: string; err: string }> {
  const p = Bun.spawn([process.execPath, CLI, "bench", ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, MOONRING_LOG: "warn" } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  const records = out
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, records, out, err };
}

describe.skipIf(!haveEngine)("bench --via native (2 ranks)", () => {
  test(
    "every op, checked every iteration, JSON",
    async () => {
      const ops = ["allreduce", "reduce", "broadcast", "allgather", "gather", "scatter", "reduce_scatter", "alltoall", "sendrecv", "barrier"];
      const r = await bench(["--nproc", "2", "--op", ops.join(","), "--min-bytes", "8", "--max-bytes", "4096", "--iters", "3", "--warmup", "1", "--check", "--json", "--quiet", "--root", "1"]);
      if (r.code !== 0) throw new Error(`bench exited ${r.code}:\n${r.err}`);
      // 10 sizes (8 .. 4096) per op, except barrier (one row)
      for (const op of ops) expect({ op, rows: r.records.filter((x) => x.op === op).length }).toEqual({ op, rows: op === "barrier" ? 1 : 10 });
      for (const rec of r.records) {
        expect(Object.keys(rec).slice(0, 8)).toEqual(["op", "bytes", "count", "dtype", "time_us", "algbw_gbps", "busbw_gbps", "wrong"]);
        expect(rec.wrong).toBe(0);
        expect(rec.dtype).toBe("float32");
        expect(typeof rec.time_us).toBe("number");
        expect(rec.time_us as number).toBeGreaterThan(0);
        expect(rec.nranks).toBe(2);
        expect(rec.iters).toBe(3);
      }
      const ag = r.records.find((x) => x.op === "allgather" && x.bytes === 4096)!;
      expect(ag.count).toBe(512); // per-rank part, nccl-tests style
      expect(ag.busbw_gbps as number).toBeCloseTo((ag.algbw_gbps as number) * 0.5, 2);
      expect(r.records.find((x) => x.op === "broadcast")!.root).toBe(1);
    },
    120_000,
  );

  test(
    "the table, a non-default dtype and redop, tcp transport",
    async () => {
      const r = await bench(["--nproc", "2", "--op", "allreduce", "--dtype", "bfloat16", "--redop", "max", "--min-bytes", "2", "--max-bytes", "64K", "--iters", "2", "--warmup", "0", "--transport", "tcp", "--quiet"]);
      if (r.code !== 0) throw new Error(`bench exited ${r.code}:\n${r.err}`);
      const lines = r.out.split("\n");
      const header = lines.find((l) => l.includes("#wrong"))!;
      expect(header.slice(1).trim().split(/\s+/)).toEqual(["size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong"]);
      expect(lines.some((l) => /^#\s+out-of-place\s+in-place\s*$/.test(l))).toBe(true);
      const rows = lines.filter((l) => /^\s+\d+\s/.test(l)).map((l) => l.trim().split(/\s+/));
      expect(rows.map((c) => Number(c[0]))).toEqual([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]);
      for (const c of rows) {
        expect(c[2]).toBe("bfloat16");
        expect(c[3]).toBe("max");
        expect(c[8]).toBe("0");
        expect(c[12]).toBe("0"); // in place, checked too
      }
      expect(lines).toContain("# Out of bounds values : 0 OK");
    },
    120_000,
  );
});

describe.skipIf(!haveEngine)("bench --via rest (2 ranks)", () => {
  test(
    "single-tensor (octet) and list (b64) ops through `launch`, checked",
    async () => {
      const ops = ["allreduce", "allgather", "reduce_scatter", "alltoall", "scatter", "sendrecv"];
      const r = await bench(["--nproc", "2", "--op", ops.join(","), "--via", "rest", "--rest-mode", "body", "--min-bytes", "64", "--max-bytes", "256", "--iters", "2", "--warmup", "1", "--check", "--json", "--quiet"]);
      if (r.code !== 0) throw new Error(`bench exited ${r.code}:\n${r.err}`);
      expect(r.records.length).toBe(ops.length * 3);
      for (const rec of r.records) {
        expect(rec.wrong).toBe(0);
        expect(rec.via).toBe("rest");
        expect(typeof rec.call_p50_us).toBe("number");
      }
    },
    120_000,
  );

  test(
    "the default: native, HTTP echo, REST bodies and REST on shared buffers for each point, one run, checked",
    async () => {
      const ops = ["allreduce", "gather", "scatter", "reduce_scatter", "alltoall", "broadcast", "reduce", "allgather", "sendrecv"];
      const r = await bench(["--nproc", "2", "--op", ops.join(","), "--via", "rest", "--min-bytes", "64", "--max-bytes", "128", "--iters", "2", "--warmup", "1", "--check", "--json", "--quiet"]);
      if (r.code !== 0) throw new Error(`bench exited ${r.code}:\n${r.err}`);
      const kinds = r.records.map((rec) => `${rec.op}/${rec.bytes}/${rec.via}/${(rec as { mode?: string }).mode ?? "-"}`);
      for (const op of ops) {
        for (const bytes of [64, 128]) {
          expect(kinds).toContain(`${op}/${bytes}/native/-`);
          expect(kinds).toContain(`${op}/${bytes}/rest/echo`);
          expect(kinds).toContain(`${op}/${bytes}/rest/body`);
          if (op !== "sendrecv") expect(kinds).toContain(`${op}/${bytes}/rest/shm`); // p2p: bodies only
        }
      }
      for (const rec of r.records) if ((rec as { mode?: string }).mode !== "echo") expect(rec.wrong).toBe(0);
    },
    180_000,
  );
});
