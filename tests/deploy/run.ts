// End-to-end test of the containerized deployment (npm run test:deploy):
//   Docker engine (started if needed) -> local base image (debootstrap, if absent) -> docker build
//   -> 4 ranks with deploy/compose.yaml -> every collective over REST from the host, checked
//   against a reference computed here -> crash rank 2's, rank 0's and rank 3's containers in turn:
//   each restarts and rejoins by itself, collectives complete (tests/deploy/heal.ts) -> docker
//   kill of one rank: the survivors go on -> tear down (always).
// Without a usable Docker engine it prints a SKIP line and exits 0.
// Traffic: host -> 127.0.0.1 published ports; rank <-> rank on the project's compose network.
//
// Flags: --skip-build (reuse the image), --keep (leave the cluster up; prints how to remove it).
// Env: MOONRING_IMAGE (default moonring:0.1.0), MOONRING_BASE_IMAGE (default: the Dockerfile's).
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { crashAndHeal, type Deployment, type HealTimes, shrinkAfterDockerKill } from "./heal";

const root = resolve(import.meta.dir, "../..");
const args = new Set(process.argv.slice(2));
const image = process.env.MOONRING_IMAGE ?? "moonring:0.1.0";
const world = 4;
const composeFile = join(root, "deploy/compose.yaml");
const project = `moonring-e2e-${process.pid}`;
const token = `e2e-${crypto.randomUUID()}`;
const t0 = performance.now();

function log(msg: string) {
  console.log(`[deploy-e2e +${((performance.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}

// ---- results ---------------------------------------------------------------------------------
let passed = 0;
let failed = 0;
const failures: string[] = [];
function check(name: string, ok: boolean, detail = "") {
  if (ok) {
    passed++;
    console.log(`  ok   ${name}`);
  } else {
    failed++;
    failures.push(name);
    console.log(`  FAIL ${name}${detail ? `: ${detail}` : ""}`);
  }
}

// ---- processes -------------------------------------------------------------------------------
interface Run {
  code: number;
  out: string;
  err: string;
}
function sh(cmd: string[], opts: { env?: Record<string, string>; timeoutMs?: number; input?: string } = {}): Run {
  const r = spawnSync(cmd[0]!, cmd.slice(1), {
    cwd: root,
    env: { ...process.env, ...opts.env },
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 120_000,
    input: opts.input,
    maxBuffer: 64 * 1024 * 1024,
  });
  return { code: r.status ?? (r.error ? 127 : 1), out: r.stdout ?? "", err: r.stderr ?? "" };
}
/** Runs with output to a log file (long steps), returns the exit code. */
async function shLogged(cmd: string[], logFile: string, env: Record<string, string> = {}, timeoutMs = 1_800_000): Promise<number> {
  const fd = openSync(logFile, "w");
  const child = spawn(cmd[0]!, cmd.slice(1), { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", fd, fd] });
  const timer = setTimeout(() => child.kill("SIGTERM"), timeoutMs);
  const code = await new Promise<number>((res) => child.on("exit", (c) => res(c ?? 1)));
  clearTimeout(timer);
  return code;
}
function tail(file: string, lines = 40): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}
const has = (bin: string) => sh(["sh", "-c", `command -v ${bin}`]).code === 0;
const isRoot = process.getuid?.() === 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function skip(reason: string): never {
  console.log(`SKIP deploy e2e: ${reason}`);
  console.log(`${passed} passed, ${failed} failed, 1 skipped`);
  process.exit(failed === 0 ? 0 : 1);
}

function aptInstall(pkgs: string[]): boolean {
  if (!isRoot || !has("apt-get")) return false;
  log(`apt-get install ${pkgs.join(" ")}`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  let r = sh(["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends", ...pkgs], { env, timeoutMs: 900_000 });
  if (r.code !== 0) {
    sh(["apt-get", "update", "-o", "DPkg::Lock::Timeout=300"], { env, timeoutMs: 300_000 });
    r = sh(["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends", ...pkgs], { env, timeoutMs: 900_000 });
  }
  if (r.code !== 0) log(`apt-get failed: ${r.err.trim().split("\n").slice(-3).join(" | ")}`);
  return r.code === 0;
}

// ---- 1. Docker engine --------------------------------------------------------------------------
async function ensureDocker(): Promise<void> {
  const up = () => sh(["docker", "info", "--format", "{{.ServerVersion}}"], { timeoutMs: 20_000 });
  if (!has("docker") && !has("dockerd")) {
    if (!aptInstall(["docker.io"])) skip("no docker CLI/engine and docker.io could not be installed");
  }
  if (up().code === 0) return;
  if (!has("dockerd")) {
    if (!aptInstall(["docker.io"])) skip("no Docker engine (dockerd) and docker.io could not be installed");
  }
  if (!isRoot) skip("Docker engine not running and not root to start dockerd");
  const logFile = join(tmpdir(), "moonring-dockerd.log");
  log(`starting dockerd (log: ${logFile}); it stays running after the test`);
  const fd = openSync(logFile, "a");
  const d = spawn("dockerd", [], { detached: true, stdio: ["ignore", fd, fd] });
  d.unref();
  for (let i = 0; i < 60; i++) {
    if (up().code === 0) return;
    if (d.exitCode !== null) break;
    await sleep(1000);
  }
  skip(`dockerd did not come up:\n${tail(logFile, 15)}`);
}

function composeCommand(): string[] {
  if (sh(["docker", "compose", "version"]).code === 0) return ["docker", "compose"];
  if (sh(["docker-compose", "version"]).code === 0) return ["docker-compose"];
  aptInstall(["docker-compose"]);
  if (sh(["docker-compose", "version"]).code === 0) return ["docker-compose"];
  skip("neither `docker compose` nor `docker-compose` is available (Debian: apt-get install docker-compose)");
}

function defaultBaseImage(): string {
  const m = /^ARG BASE_IMAGE=(\S+)/m.exec(readFileSync(join(root, "Dockerfile"), "utf8"));
  return process.env.MOONRING_BASE_IMAGE ?? m?.[1] ?? "debian:bookworm-slim";
}

// ---- REST helpers ------------------------------------------------------------------------------
let hostPorts: number[] = [];
const url = (r: number, path: string) => `http://127.0.0.1:${hostPorts[r]}${path}`;
const authHeaders = { authorization: `Bearer ${token}`, "content-type": "application/json" };

interface Reply {
  status: number;
  body: any;
}
async function get(r: number, path: string, timeoutMs = 5000, headers: Record<string, string> = authHeaders): Promise<Reply> {
  const res = await fetch(url(r, path), { headers, signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.json().catch(() => null) };
}
async function post(r: number, path: string, body: unknown, timeoutMs = 60_000): Promise<Reply> {
  const res = await fetch(url(r, path), {
    method: "POST",
    headers: authHeaders,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}
/** Every rank of `ranks` makes its call at once (as a real job's ranks would). */
function collective(op: string, bodyOf: (r: number) => unknown, ranks = [...Array(world).keys()]): Promise<Reply[]> {
  return Promise.all(ranks.map((r) => post(r, `/collective/${op}`, bodyOf(r))));
}

// ---- reference data ----------------------------------------------------------------------------
function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20261126);
const ints = (n: number, lo: number, hi: number) => Array.from({ length: n }, () => lo + Math.floor(rand() * (hi - lo + 1)));
/** float32-exact values (quarters), so sums of 4 are exact too and JSON round-trips exactly. */
const quarters = (n: number) => ints(n, -400, 400).map((v) => v / 4);
const tensor = (dtype: string, shape: number[], data: unknown[]) => ({ dtype, shape, data });
const perRank = <T>(f: (r: number) => T) => Array.from({ length: world }, (_, r) => f(r));
const sumCols = (rows: number[][]) => rows[0]!.map((_, i) => rows.reduce((s, row) => s + row[i]!, 0));

function sameTensor(got: any, dtype: string, shape: number[], data: unknown[], tol = 0): string | null {
  if (!got || typeof got !== "object") return `expected a tensor, got ${JSON.stringify(got)}`;
  if (got.dtype !== dtype) return `dtype ${got.dtype} != ${dtype}`;
  if (JSON.stringify(got.shape) !== JSON.stringify(shape)) return `shape ${JSON.stringify(got.shape)} != ${JSON.stringify(shape)}`;
  const values: unknown[] = got.data ?? [];
  if (values.length !== data.length) return `length ${values.length} != ${data.length}`;
  for (let i = 0; i < data.length; i++) {
    const g = values[i];
    const w = data[i];
    const ok = typeof w === "number" ? typeof g === "number" && Math.abs(g - w) <= tol * Math.max(1, Math.abs(w)) : String(g) === String(w);
    if (!ok) return `element ${i}: got ${JSON.stringify(g)}, want ${JSON.stringify(w)}`;
  }
  return null;
}
function expectAll(name: string, replies: Reply[], verify: (r: number, result: any) => string | null) {
  const problems: string[] = [];
  replies.forEach((rep, r) => {
    if (rep.status !== 200) problems.push(`rank ${r}: HTTP ${rep.status} ${JSON.stringify(rep.body).slice(0, 300)}`);
    else {
      const p = verify(r, rep.body?.result);
      if (p) problems.push(`rank ${r}: ${p}`);
    }
  });
  check(name, problems.length === 0, problems.slice(0, 4).join("; "));
}

async function runCollectives() {
  // allreduce float32 sum, shape [2,3]
  {
    const x = perRank(() => quarters(6));
    const want = sumCols(x);
    const reps = await collective("allreduce", (r) => ({ tensor: tensor("float32", [2, 3], x[r]!), op: "sum" }));
    expectAll("allreduce float32 sum", reps, (_r, res) => sameTensor(res, "float32", [2, 3], want));
  }
  // allreduce int64 max, values beyond 2^53 as decimal strings
  {
    const x = perRank(() => ints(5, -1e6, 1e6).map((v) => (BigInt(v) * 9_007_199_254_741n).toString()));
    const want = x[0]!.map((_, i) => x.map((row) => BigInt(row[i]!)).reduce((a, b) => (a > b ? a : b)).toString());
    const reps = await collective("allreduce", (r) => ({ tensor: tensor("int64", [5], x[r]!), op: "max" }));
    expectAll("allreduce int64 max (decimal strings)", reps, (_r, res) => sameTensor(res, "int64", [5], want));
  }
  // allreduce float64 avg
  {
    const x = perRank(() => Array.from({ length: 4 }, () => rand() * 200 - 100));
    const want = sumCols(x).map((v) => v / world);
    const reps = await collective("allreduce", (r) => ({ tensor: tensor("float64", [4], x[r]!), op: "avg" }));
    expectAll("allreduce float64 avg", reps, (_r, res) => sameTensor(res, "float64", [4], want, 1e-12));
  }
  // allreduce float32 sum, b64 in and out
  {
    const x = perRank(() => quarters(8));
    const want = sumCols(x);
    const b64 = (v: number[]) => Buffer.from(new Float32Array(v).buffer).toString("base64");
    const reps = await collective("allreduce", (r) => ({ tensor: { dtype: "float32", shape: [8], b64: b64(x[r]!) }, op: "sum" }));
    expectAll("allreduce float32 sum (b64)", reps, (_r, res) => {
      if (typeof res?.b64 !== "string") return `expected b64, got ${JSON.stringify(res).slice(0, 200)}`;
      const got = Array.from(new Float32Array(new Uint8Array(Buffer.from(res.b64, "base64")).buffer));
      return sameTensor({ ...res, data: got }, "float32", [8], want);
    });
  }
  // reduce int32 sum to rank 2
  {
    const x = perRank(() => ints(7, -1000, 1000));
    const want = sumCols(x);
    const reps = await collective("reduce", (r) => ({ tensor: tensor("int32", [7], x[r]!), dst: 2, op: "sum" }));
    expectAll("reduce int32 sum dst=2", reps, (r, res) =>
      r === 2 ? sameTensor(res, "int32", [7], want) : res === null ? null : `non-dst expected null, got ${JSON.stringify(res)}`,
    );
  }
  // broadcast float32 from rank 1
  {
    const x = perRank(() => quarters(3));
    const reps = await collective("broadcast", (r) => ({ tensor: tensor("float32", [3], x[r]!), src: 1 }));
    expectAll("broadcast float32 src=1", reps, (_r, res) => sameTensor(res, "float32", [3], x[1]!));
  }
  // allgather int32
  {
    const x = perRank(() => ints(3, -50, 50));
    const reps = await collective("allgather", (r) => ({ tensor: tensor("int32", [3], x[r]!) }));
    expectAll("allgather int32", reps, (_r, res) => {
      if (!Array.isArray(res) || res.length !== world) return `expected a list of ${world}, got ${JSON.stringify(res)?.slice(0, 200)}`;
      for (let j = 0; j < world; j++) {
        const p = sameTensor(res[j], "int32", [3], x[j]!);
        if (p) return `[${j}] ${p}`;
      }
      return null;
    });
  }
  // gather float32 to rank 3
  {
    const x = perRank(() => quarters(2));
    const reps = await collective("gather", (r) => ({ tensor: tensor("float32", [2], x[r]!), dst: 3 }));
    expectAll("gather float32 dst=3", reps, (r, res) => {
      if (r !== 3) return res === null ? null : `non-dst expected null, got ${JSON.stringify(res)}`;
      if (!Array.isArray(res) || res.length !== world) return `expected a list of ${world}`;
      for (let j = 0; j < world; j++) {
        const p = sameTensor(res[j], "float32", [2], x[j]!);
        if (p) return `[${j}] ${p}`;
      }
      return null;
    });
  }
  // scatter int32 from rank 0
  {
    const parts = perRank(() => ints(4, -9, 9));
    const reps = await collective("scatter", (r) =>
      r === 0 ? { src: 0, tensors: parts.map((p) => tensor("int32", [4], p)) } : { src: 0 },
    );
    expectAll("scatter int32 src=0", reps, (r, res) => sameTensor(res, "int32", [4], parts[r]!));
  }
  // reduce_scatter float32 sum
  {
    const x = perRank(() => perRank(() => quarters(2))); // x[rank][block]
    const reps = await collective("reduce_scatter", (r) => ({ tensors: x[r]!.map((b) => tensor("float32", [2], b)), op: "sum" }));
    expectAll("reduce_scatter float32 sum", reps, (r, res) => sameTensor(res, "float32", [2], sumCols(x.map((blocks) => blocks[r]!))));
  }
  // alltoall int32, uneven sizes
  {
    const size = (from: number, to: number) => ((from + 2 * to) % 3) + 1;
    const x = perRank((r) => perRank((j) => ints(size(r, j), -99, 99))); // x[sender][receiver]
    const reps = await collective("alltoall", (r) => ({ tensors: x[r]!.map((b) => tensor("int32", [b.length], b)) }));
    expectAll("alltoall int32 (uneven sizes)", reps, (r, res) => {
      if (!Array.isArray(res) || res.length !== world) return `expected a list of ${world}`;
      for (let j = 0; j < world; j++) {
        const p = sameTensor(res[j], "int32", [size(j, r)], x[j]![r]!);
        if (p) return `[${j}] ${p}`;
      }
      return null;
    });
  }
  // barrier
  {
    const reps = await collective("barrier", () => ({}));
    expectAll("barrier", reps, (_r, res) => (res === null ? null : `expected null, got ${JSON.stringify(res)}`));
  }
}

// ---- cluster lifecycle ------------------------------------------------------------------------
async function freeHostPorts(n: number): Promise<number[]> {
  const isFree = (port: number) =>
    new Promise<boolean>((res) => {
      const s = createServer();
      s.once("error", () => res(false));
      s.listen(port, "127.0.0.1", () => s.close(() => res(true)));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 30000 + Math.floor(Math.random() * 20000);
    const ports = Array.from({ length: n }, (_, i) => base + i);
    let ok = true;
    for (const p of ports) if (!(await isFree(p))) ok = false;
    if (ok) return ports;
  }
  throw new Error("no free host ports");
}

async function waitReady(ranks: number[], timeoutMs: number): Promise<Map<number, Reply>> {
  const deadline = Date.now() + timeoutMs;
  const last = new Map<number, Reply>();
  while (Date.now() < deadline) {
    await Promise.all(
      ranks.map(async (r) => {
        try {
          last.set(r, await get(r, "/health", 2000));
        } catch (e) {
          last.set(r, { status: 0, body: String(e) });
        }
      }),
    );
    if (ranks.every((r) => last.get(r)?.status === 200 && last.get(r)?.body?.ready === true)) return last;
    await sleep(1000);
  }
  return last;
}

/** Kubernetes manifests: scripts/k8s-lint.sh (typed decode, kubernetes-validate --strict, kube-score). */
function validateK8s() {
  const r = spawnSync("sh", [join(root, "scripts/k8s-lint.sh")], { cwd: root, encoding: "utf8", timeout: 900_000 });
  if (r.status === 3) {
    log(`SKIP k8s manifest validation: a validator could not be installed: ${(r.stderr ?? "").trim().slice(-300)}`);
    return;
  }
  const lines = `${r.stdout ?? ""}`.trim().split("\n");
  for (const l of lines.filter((l) => /FAIL|ERROR|CRITICAL/.test(l))) console.log(`    ${l.trim()}`);
  check(`k8s manifests (typed decode + kubernetes-validate --strict + kube-score): ${lines.at(-1)}`, r.status === 0, (r.stderr ?? "").trim().slice(-500));
}

/**
 * Whatever of this project `compose down` left (it can time out on a starved machine) is
 * removed by force; returns what was left for the check ("" when down had removed it all).
 */
function removeLeftovers(): string {
  const label = `label=com.docker.compose.project=${project}`;
  const containers = sh(["docker", "ps", "-aq", "--filter", label]).out.trim().split("\n").filter(Boolean);
  const networks = sh(["docker", "network", "ls", "-q", "--filter", label]).out.trim().split("\n").filter(Boolean);
  if (containers.length > 0) sh(["docker", "rm", "-f", "-v", ...containers], { timeoutMs: 120_000 });
  if (networks.length > 0) sh(["docker", "network", "rm", ...networks], { timeoutMs: 60_000 });
  const still = sh(["docker", "ps", "-aq", "--filter", label]).out.trim() + sh(["docker", "network", "ls", "-q", "--filter", label]).out.trim();
  if (still) console.log(`  could not remove project ${project}'s containers/networks: ${still}`);
  return containers.length + networks.length > 0 ? `left by down: ${containers.length} containers, ${networks.length} networks;` : "";
}

/** Step 6: tests/deploy/heal.ts against this cluster; each step's times go to the log. */
async function selfHealing(dc: (...a: string[]) => string[], env: Record<string, string>): Promise<void> {
  const d: Deployment = {
    world,
    get: (r, path, timeoutMs) => get(r, path, timeoutMs),
    post: (r, path, body, timeoutMs) => post(r, path, body, timeoutMs),
    check,
    log,
    containerId: (r) => sh(dc("ps", "-q", `rank${r}`), { env }).out.trim(),
    docker: (a) => sh(["docker", ...a]),
  };
  if (!isRoot) {
    log("SKIP crash/heal: killing a container's process from the host needs root");
    return;
  }
  const healed: HealTimes[] = [];
  for (const victim of [2, 0, 3]) {
    try {
      const t = await crashAndHeal(d, victim);
      if (t) healed.push(t);
    } catch (e) {
      check(`crash of rank ${victim}'s container heals`, false, (e as Error).message);
      return;
    }
  }
  for (const t of healed) {
    log(`heal times (ms after the kill), rank ${t.victim}: survivors ${t.survivorsDoneMs}, restarted ${t.restartedMs}, whole ${t.wholeMs}, first full-world allreduce ${t.firstWorldMs}`);
  }
  try {
    await shrinkAfterDockerKill(d, 2);
  } catch (e) {
    check("docker kill: the job shrinks and goes on", false, (e as Error).message);
  }
}

async function main() {
  validateK8s();
  await ensureDocker();
  const compose = composeCommand();
  const server = sh(["docker", "info", "--format", "{{.ServerVersion}}"]).out.trim();
  const composeVersion = sh([...compose, "version", ...(compose.length === 2 ? ["--short"] : [])]).out.trim().split("\n")[0];
  log(`Docker engine ${server}; compose: ${compose.join(" ")} (${composeVersion})`);

  // 2. base image
  const base = defaultBaseImage();
  if (sh(["docker", "image", "inspect", base]).code !== 0) {
    if (!has("debootstrap") && !aptInstall(["debootstrap"])) skip(`base image ${base} absent and debootstrap unavailable`);
    log(`base image ${base} absent: building it with deploy/base-image.sh (debootstrap)`);
    const logFile = join(tmpdir(), `moonring-base-image-${process.pid}.log`);
    const code = await shLogged(["sh", "deploy/base-image.sh", base], logFile);
    if (code !== 0) throw new Error(`deploy/base-image.sh failed:\n${tail(logFile)}`);
  }
  log(`base image ${base}: ${sh(["docker", "image", "inspect", "-f", "{{.Size}}", base]).out.trim()} bytes`);

  // 3. image build (extra CA certificates of this host for the build stage's downloads)
  const caDir = join(root, "deploy/ca-certificates");
  const copied: string[] = [];
  let buildSeconds = NaN;
  if (!args.has("--skip-build")) {
    const hostCa = "/usr/local/share/ca-certificates";
    if (existsSync(hostCa)) {
      mkdirSync(caDir, { recursive: true });
      for (const f of readdirSync(hostCa).filter((f) => f.endsWith(".crt"))) {
        if (!existsSync(join(caDir, f))) {
          copyFileSync(join(hostCa, f), join(caDir, f));
          copied.push(join(caDir, f));
        }
      }
    }
    const logFile = join(tmpdir(), `moonring-docker-build-${process.pid}.log`);
    log(`docker build -t ${image} . (log: ${logFile})`);
    const tb = performance.now();
    const code = await shLogged(["docker", "build", "--force-rm", "--build-arg", `BASE_IMAGE=${base}`, "-t", image, "."], logFile);
    buildSeconds = (performance.now() - tb) / 1000;
    for (const f of copied) rmSync(f, { force: true });
    check("docker build", code === 0, tail(logFile));
    if (code !== 0) return;
  }
  const sizeBytes = Number(sh(["docker", "image", "inspect", "-f", "{{.Size}}", image]).out.trim());
  log(`image ${image}: ${(sizeBytes / 1e6).toFixed(1)} MB${Number.isNaN(buildSeconds) ? "" : `, built in ${buildSeconds.toFixed(1)} s`}`);

  // 4. cluster
  hostPorts = await freeHostPorts(world);
  const env: Record<string, string> = { MOONRING_IMAGE: image, MOONRING_TOKEN: token, COMPOSE_PROJECT_NAME: project };
  hostPorts.forEach((p, r) => (env[`MOONRING_HOST_PORT_${r}`] = String(p)));
  const dc = (...a: string[]) => [...compose, "-p", project, "-f", composeFile, ...a];
  let up = false;
  try {
    log(`compose up: project ${project}, ranks on 127.0.0.1:${hostPorts.join(",")}`);
    up = true;
    const tu = performance.now();
    const r = sh(dc("up", "-d"), { env, timeoutMs: 300_000 });
    check("compose up (rank 0 healthy gates ranks 1..3)", r.code === 0, (r.err || r.out).trim().split("\n").slice(-8).join(" | "));
    if (r.code !== 0) return;
    const health = await waitReady([0, 1, 2, 3], 120_000);
    const ready = [0, 1, 2, 3].every((r) => health.get(r)?.status === 200 && health.get(r)?.body?.ready === true);
    check(
      `all ${world} ranks ready (GET /health 200 ready)`,
      ready,
      [...health].map(([r, h]) => `rank ${r}: ${h.status} ${JSON.stringify(h.body).slice(0, 160)}`).join("; "),
    );
    if (!ready) return;
    log(`world ready ${((performance.now() - tu) / 1000).toFixed(1)} s after compose up`);
    for (let r = 0; r < world; r++) {
      const h = health.get(r)!.body;
      check(`rank ${r} /health reports rank ${r} of ${world}`, h.rank === r && h.world_size === world, JSON.stringify(h));
    }
    const noAuth = await get(0, "/health", 5000, {});
    const noAuthCollective = await fetch(url(0, "/collective/barrier"), { method: "POST", body: "{}", signal: AbortSignal.timeout(5000) });
    check("MOONRING_TOKEN enforced (collective without bearer -> 401)", noAuthCollective.status === 401, `got ${noAuthCollective.status}`);
    log(`/health without bearer token -> ${noAuth.status}`);
    const cluster = await get(0, "/cluster");
    check(
      "GET /cluster: 4 healthy ranks",
      cluster.status === 200 && cluster.body?.world_size === world && JSON.stringify(cluster.body?.active_ranks) === "[1,1,1,1]",
      JSON.stringify(cluster.body).slice(0, 400),
    );
    log(`cluster: ${JSON.stringify(cluster.body)}`);

    // 5. every collective
    await runCollectives();
    const health2 = await Promise.all([0, 1, 2, 3].map((r) => get(r, "/health")));
    // Docker's own view: every container's HEALTHCHECK passes (rank 0: --live, others: ready).
    let healthStates = "";
    for (let i = 0; i < 30; i++) {
      const ids = sh(dc("ps", "-q"), { env }).out.trim().split("\n").filter(Boolean);
      healthStates = sh(["docker", "inspect", "-f", "{{.Name}} {{.State.Health.Status}}", ...ids]).out.trim();
      if (ids.length === world && healthStates.split("\n").every((l) => l.endsWith(" healthy"))) break;
      await sleep(1000);
    }
    check("docker HEALTHCHECK: all 4 containers healthy", healthStates.split("\n").filter((l) => l.endsWith(" healthy")).length === world, healthStates);
    log(`containers:\n${sh(["docker", "ps", "--filter", `label=com.docker.compose.project=${project}`, "--format", "{{.Names}}  {{.Status}}"]).out.trim()}`);
    check("all ranks still ready after the collectives", health2.every((h) => h.status === 200 && h.body?.ready === true));

    // 6. crashes and self-healing (issue 20): a non-zero rank, the coordinator (rank 0), a
    // rank whose restart registers through a rank that no longer coordinates; then docker kill.
    await selfHealing(dc, env);
  } finally {
    if (up) {
      if (failed > 0) {
        const logs = sh(dc("logs", "--no-color", "--tail", "30"), { env });
        console.log(`---- compose logs (tail) ----\n${logs.out}${logs.err}`);
      }
      if (args.has("--keep")) log(`--keep: cluster left up; remove with: ${dc("down", "-v").join(" ")}`);
      else {
        const d = sh(dc("down", "-v", "--remove-orphans", "-t", "5"), { env, timeoutMs: 120_000 });
        const left = removeLeftovers();
        check("compose down (no containers or networks left)", d.code === 0 && left === "", `${left} ${(d.err || "").trim().split("\n").slice(-3).join(" | ")}`);
      }
    }
  }
}

try {
  await main();
} catch (e) {
  failed++;
  console.log(`  FAIL deploy e2e: ${(e as Error).stack ?? e}`);
}
console.log(`\ndeploy e2e: ${passed} passed, ${failed} failed${failures.length ? ` (${failures.join("; ")})` : ""}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
