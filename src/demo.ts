// npm run demo: launches 4 local ranks on free ports, runs every collective through REST with
// the typed client, prints each (small) result and an allreduce bandwidth table, stops the
// ranks. Anything the native side can't do yet is reported per op instead of aborting.
import { MoonringClient, MoonringError, fromBFloat16, tensor, toBFloat16, type Tensor } from "./client/index";
import { freePortRange, sleep } from "./util/net";

const N = 4;
const cli = new URL("./cli.ts", import.meta.url).pathname;

function show(t: Tensor | null): string {
  if (!t) return "null";
  let vals: unknown[];
  if (t.dtype === "bfloat16") vals = [...fromBFloat16(t.data as Uint16Array)];
  else if (t.dtype === "int64") vals = [...(t.data as BigInt64Array)].map((v) => `${v}n`);
  else if (t.dtype === "bool") vals = [...(t.data as Uint8Array)].map((v) => v !== 0);
  else vals = [...(t.data as Float32Array)];
  return `${t.dtype}${JSON.stringify(t.shape)} [${vals.join(", ")}]`;
}

function showAny(x: unknown): string {
  if (typeof x === "string") return x;
  if (Array.isArray(x)) return `[${x.map((t) => show(t as Tensor | null)).join(" | ")}]`;
  return show(x as Tensor | null);
}

const problems: string[] = [];

async function step(name: string, fn: () => Promise<unknown[]>): Promise<void> {
  const t0 = performance.now();
  try {
    const results = await fn();
    console.log(`\n${name}  (${(performance.now() - t0).toFixed(1)} ms)`);
    results.forEach((r, rank) => console.log(`  rank ${rank}: ${showAny(r)}`));
  } catch (e) {
    const msg = e instanceof MoonringError ? `${e.status} ${e.code}: ${e.message}` : (e as Error).message;
    console.log(`\n${name}  FAILED: ${msg}`);
    problems.push(`${name}: ${msg}`);
  }
}

type Each = <T>(fn: (r: number) => Promise<T>) => Promise<T[]>;

/** `moonring launch` of N ranks from `port`: its stdout lines (echoed), its stderr, a stop. */
function launchRanks(port: number) {
  const launcher = Bun.spawn([process.execPath, cli, "launch", "--nproc", String(N), "--port", String(port)], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MOONRING_LOG: process.env.MOONRING_LOG ?? "warn" },
  });
  let stderr = "";
  void (async () => {
    for await (const c of launcher.stderr) stderr += new TextDecoder().decode(c);
  })();
  const lines: string[] = [];
  void (async () => {
    let buf = "";
    for await (const c of launcher.stdout) {
      buf += new TextDecoder().decode(c);
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        console.log(`  launch: ${line}`);
      }
    }
  })();
  const stop = async () => {
    if (launcher.exitCode === null) launcher.kill("SIGTERM");
    await launcher.exited;
  };
  return { launcher, lines, stderr: () => stderr, stop };
}

/** Every collective once through the typed client (c: binary wire, cj: JSON data). */
async function collectiveSteps(c: MoonringClient[], cj: MoonringClient[], each: Each): Promise<void> {
  const ranks = [...Array(N).keys()];
  await step("allreduce float32 sum of [r, 1]", () => each((r) => c[r]!.allreduce(tensor("float32", [r, 1]), "sum")));
  await step("allreduce bfloat16 max of [r/2, -r]", () => each((r) => c[r]!.allreduce({ dtype: "bfloat16", shape: [2], data: toBFloat16([r / 2, -r]) }, "max")));
  await step("allreduce int64 sum (exact past 2^53)", () => each((r) => c[r]!.allreduce(tensor("int64", [2n ** 60n + BigInt(r)]), "sum")));
  await step("reduce int32 prod of [r+1] to rank 3", () => each((r) => c[r]!.reduce(tensor("int32", [r + 1]), 3, "prod")));
  await step("broadcast float64 from rank 2", () => each((r) => c[r]!.broadcast(tensor("float64", [r * 1.5, r]), 2)));
  await step("allgather int16 [r, 10r] (JSON data on the wire)", () => each((r) => cj[r]!.allgather(tensor("int16", [r, 10 * r]))));
  await step("gather uint8 [r] to rank 1", () => each((r) => c[r]!.gather(tensor("uint8", [r]), 1)));
  await step("scatter float32 from rank 3", () => each((r) => c[r]!.scatter(r === 3 ? ranks.map((j) => tensor("float32", [j * 100])) : null, 3)));
  await step("reduce_scatter float32 sum", () => each((r) => c[r]!.reduceScatter(ranks.map((j) => tensor("float32", [r + j])), "sum")));
  await step("alltoall int32 with uneven sizes (rank r sends j+1 values to rank j)", () =>
    each((r) => c[r]!.alltoall(ranks.map((j) => tensor("int32", new Array(j + 1).fill(r * 10 + j))))),
  );
  await step("barrier", () => each(async (r) => (await c[r]!.barrier(), null)));
  await step("p2p: rank 0 sends bool [true, false] to rank 3", async () => {
    const [, got] = await Promise.all([c[0]!.send(tensor("bool", [true, false]), 3), c[3]!.recv(0)]);
    return [null, null, null, got];
  });
  await step("mismatch is a 409 on every rank (rank 3 calls max, the rest sum)", async () => {
    const out = await each((r) => c[r]!.allreduce(tensor("float32", [1]), r === 3 ? "max" : "sum").then(() => "ok", (e: MoonringError) => e.code));
    if (out.some((x) => x !== "collective_mismatch")) throw new Error(`expected collective_mismatch everywhere, got ${out.join(", ")}`);
    return out;
  });

}

/** allreduce float32 through REST with octet-stream bodies: the median time per size. */
async function bandwidthTable(port: number, each: Each): Promise<void> {
  const ranks = [...Array(N).keys()];
  console.log("\nallreduce float32 through REST (octet-stream), 4 ranks, median of the runs:");
  console.log("       size(B)   count   time(us)   algbw(GB/s)   busbw(GB/s)");
  const co = Array.from({ length: N }, (_, r) => new MoonringClient(`http://127.0.0.1:${port + r}`, { wire: "octet" }));
  for (const bytes of [8, 1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024]) {
    const count = bytes / 4;
    const inputs = ranks.map((r) => tensor("float32", new Float32Array(count).fill(r + 1)));
    const iters = bytes >= 1 << 20 ? 5 : 300;
    const warmup = bytes >= 1 << 20 ? 2 : 100;
    const times: number[] = [];
    try {
      for (let i = 0; i < iters + warmup; i++) {
        const t0 = performance.now();
        const out = await each((r) => co[r]!.allreduce(inputs[r]!, "sum"));
        const dt = performance.now() - t0;
        if (i >= warmup) times.push(dt);
        if (i === 0 && (out[0]!.data as Float32Array)[count - 1] !== (N * (N + 1)) / 2) throw new Error("wrong result");
      }
      times.sort((a, b) => a - b);
      const us = times[Math.floor(times.length / 2)]! * 1000;
      const algbw = bytes / (us * 1e-6) / 1e9;
      console.log(
        `  ${String(bytes).padStart(12)}  ${String(count).padStart(6)}  ${us.toFixed(1).padStart(9)}  ${algbw.toFixed(3).padStart(12)}  ${((algbw * 2 * (N - 1)) / N).toFixed(3).padStart(12)}`,
      );
    } catch (e) {
      console.log(`  ${String(bytes).padStart(12)}  FAILED: ${(e as Error).message}`);
      problems.push(`bandwidth ${bytes} B: ${(e as Error).message}`);
    }
  }
}

async function main(): Promise<number> {
  const port = await freePortRange(N);
  console.log(`moonring demo: launching ${N} ranks on 127.0.0.1:${port}..${port + N - 1}`);
  const { launcher, lines, stderr, stop } = launchRanks(port);
  process.on("SIGINT", () => void stop().then(() => process.exit(130)));

  const until = Date.now() + 60_000;
  while (lines.filter((l) => / ready /.test(l)).length < N) {
    if (launcher.exitCode !== null || Date.now() > until) {
      await stop();
      console.log("\nThe ranks did not start. What the launcher said:\n" + stderr().trim());
      if (/native data plane is not available|engine\.ts|libmoonring/i.test(stderr())) {
        console.log(
          "\nNOT WORKING YET: the native data plane (src/native/engine.ts over libmoonring.so) is missing or incomplete,\n" +
            "so rank services cannot move tensor bytes. The control plane itself is tested in-process: bun test tests/unit",
        );
      }
      return 1;
    }
    await sleep(50);
  }
  const c = Array.from({ length: N }, (_, r) => new MoonringClient(`http://127.0.0.1:${port + r}`));
  const cj = Array.from({ length: N }, (_, r) => new MoonringClient(`http://127.0.0.1:${port + r}`, { wire: "json" }));
  const ranks = [...Array(N).keys()];
  const each = <T>(fn: (r: number) => Promise<T>) => Promise.all(ranks.map(fn));

  try {
    await collectiveSteps(c, cj, each);
    await bandwidthTable(port, each);
  } finally {
    await stop();
  }
  console.log("\nranks stopped.");
  if (problems.length) {
    console.log(`\nNOT WORKING YET (${problems.length}):`);
    for (const p of problems) console.log(`  - ${p}`);
    return 1;
  }
  console.log("every collective worked.");
  return 0;
}

process.exit(await main());
