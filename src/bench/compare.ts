// `bench --via rest` (--rest-mode all, the default): for every point, in one run on the same
// machine state, the native engine alone, a plain HTTP echo of the same body, REST with the
// tensors in bodies, and REST on shared buffers; one table of p50 times and the ratios
// issue 12 asks about (JSON lines: every result, with "via" and "mode").
import { loadavg } from "node:os";
import { EchoRunner } from "./echo";
import { sizeLabel } from "./plot";
import { RestRunner } from "./rest";
import type { RunConfig, Runner } from "./runner";
import { formatTimeUs, jsonLine, type BenchOp, type BenchResult } from "./spec";

const COLS: [string, number][] = [
  ["size(B)", 11],
  ["native", 10],
  ["echo", 10],
  ["rest-body", 10],
  ["rest-shm", 10],
  ["body/(echo+nat)", 16],
  ["body/echo", 10],
  ["shm/native", 11],
  ["#wrong", 8],
];

function row(cells: string[]): string {
  return cells.map((c, i) => c.padStart(COLS[i]![1])).join(" ");
}

const ratio = (a: number, b: number) => (b > 0 ? (a / b).toFixed(2) : "-");

export async function runCompare(cfg: RunConfig, json: boolean, quiet: boolean): Promise<BenchResult[]> {
  const out = (s: string) => process.stdout.write(s + "\n");
  const { NativeRunner } = await import("./native");
  const native = new NativeRunner({ ...cfg, via: "native" });
  const echo = new EchoRunner(cfg);
  const body = new RestRunner(cfg, "body");
  const shm = RestRunner.sharing(body, "shm");
  const runners: [string, Runner][] = [
    ["native", native],
    ["echo", echo],
    ["rest-body", body],
    ["rest-shm", shm],
  ];
  const all: BenchResult[] = [];
  const started: Runner[] = [];
  try {
    for (const [, r] of runners) {
      await r.start();
      started.push(r);
    }
    for (const op of cfg.ops) {
      if (!json) {
        out(`# moonring bench: ${op}, ${cfg.nproc} ranks, ${cfg.dtype}, ${cfg.device}: native engine vs plain HTTP echo vs REST (bodies, shared buffers), one run`);
        out(`#   p50 per iteration (slowest rank) in us; loadavg ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
        out("#" + row(COLS.map(([name]) => name)).slice(1));
      }
      const sizes = op === "barrier" ? [0] : cfg.sizes;
      for (const size of sizes) {
        const got: Record<string, BenchResult | null> = {};
        for (const [name, r] of runners) {
          if (!quiet) process.stderr.write(`bench: ${op} ${sizeLabel(size)}B ${name}\n`);
          got[name] = await r.point(op as BenchOp, size);
          if (got[name]) all.push(got[name]!);
          if (json && got[name]) out(jsonLine(got[name]!));
        }
        if (json || !got.native) continue;
        const p = (k: string) => got[k]?.p50_us ?? 0;
        const wrong = ["rest-body", "rest-shm"].map((k) => (got[k]?.wrong ?? "-") as number | string).join(",");
        out(
          row([
            String(got.native.bytes),
            formatTimeUs(p("native")),
            formatTimeUs(p("echo")),
            formatTimeUs(p("rest-body")),
            got["rest-shm"] ? formatTimeUs(p("rest-shm")) : "-",
            ratio(p("rest-body"), p("echo") + p("native")),
            ratio(p("rest-body"), p("echo")),
            got["rest-shm"] ? ratio(p("rest-shm"), p("native")) : "-",
            wrong,
          ]),
        );
      }
      if (!json) out("#");
    }
  } finally {
    for (const r of started.reverse()) await r.stop().catch(() => {});
  }
  return all;
}
