// Self-healing in the real-Docker deployment (issue 20, npm run test:deploy): a rank's container
// crashes while the job runs (its main process killed from the host, as the OOM killer or a
// segfault would), compose's restart policy (on-failure) starts it again, the restarted rank
// rejoins by itself (MOONRING_REJOIN=auto) and a collective across the whole world completes
// with exact values — no operator call anywhere. Rank 0 (the coordinator) included: while it is
// down the survivors elect rank 1 and finish the collective they were waiting in among
// themselves; the restarted rank 0 is found by the new coordinator and rejoins as an ordinary
// rank.
//
// Why not `docker kill`: Docker treats it as an operator's stop and never applies a restart
// policy to it (moby/moby#21359, #28396); healAfterDockerKill() shows what the job does then:
// it shrinks and goes on without the rank.

export interface Reply {
  status: number;
  body: any;
}

/** What the deploy test gives this module: REST on a rank's published port, results, Docker. */
export interface Deployment {
  world: number;
  get(rank: number, path: string, timeoutMs?: number): Promise<Reply>;
  post(rank: number, path: string, body: unknown, timeoutMs?: number): Promise<Reply>;
  check(name: string, ok: boolean, detail?: string): void;
  log(msg: string): void;
  /** The running container of a rank (compose service rankN). */
  containerId(rank: number): string;
  docker(args: string[]): { code: number; out: string; err: string };
}

/** Times of one crash and heal, in ms after the kill. */
export interface HealTimes {
  victim: number;
  survivorsDoneMs: number;
  restartedMs: number;
  wholeMs: number;
  firstWorldMs: number;
}

const HEAL_TIMEOUT_MS = 90_000;
const POLL_MS = 100;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ranksOf = (n: number) => [...Array(n).keys()];
const sumOver = (inputs: number[][], members: number[]) => inputs[0]!.map((_, i) => members.reduce((s, r) => s + inputs[r]![i]!, 0));
const randInts = (n: number) => Array.from({ length: n }, () => Math.floor(Math.random() * 2001) - 1000);

/** Polls `fn` every POLL_MS until it returns a value, or throws after `timeoutMs`. */
async function until<T>(what: string, fn: () => Promise<T | null>, timeoutMs = HEAL_TIMEOUT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== null) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    await sleep(POLL_MS);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ""}`);
}

async function clusterAt(d: Deployment, rank: number): Promise<any> {
  const c = await d.get(rank, "/cluster", 3000);
  if (c.status !== 200) throw new Error(`rank ${rank} /cluster -> ${c.status}`);
  return c.body;
}

/** Each of `members` calls allreduce (int32 sum) at once; the replies and the exact expected sum. */
function allreduce(d: Deployment, members: number[], timeoutMs: number): { inputs: number[][]; replies: Promise<Reply[]> } {
  const inputs = ranksOf(d.world).map(() => randInts(6));
  const replies = Promise.all(
    members.map((r) =>
      d
        .post(r, "/collective/allreduce", { tensor: { dtype: "int32", shape: [6], data: inputs[r] }, op: "sum", timeout_ms: timeoutMs }, timeoutMs + 15_000)
        .catch((e: Error) => ({ status: 0, body: e.message }) as Reply),
    ),
  );
  return { inputs, replies };
}

/** null when every reply is 200 with the exact sum over `contributors`; else what is wrong. */
function wrongSum(replies: Reply[], inputs: number[][], contributors: number[]): string | null {
  const want = sumOver(inputs, contributors);
  for (const [i, rep] of replies.entries()) {
    if (rep.status !== 200) return `reply ${i}: HTTP ${rep.status} ${JSON.stringify(rep.body).slice(0, 300)}`;
    if (JSON.stringify(rep.body?.contributors) !== JSON.stringify(contributors)) return `reply ${i}: contributors ${JSON.stringify(rep.body?.contributors)}`;
    if (JSON.stringify(rep.body?.result?.data) !== JSON.stringify(want)) return `reply ${i}: ${JSON.stringify(rep.body?.result?.data)} != ${JSON.stringify(want)}`;
  }
  return null;
}

function containerState(d: Deployment, id: string): { pid: number; restarts: number; running: boolean } {
  const r = d.docker(["inspect", "-f", "{{.State.Pid}} {{.RestartCount}} {{.State.Running}}", id]);
  const [pid, restarts, running] = r.out.trim().split(" ");
  return { pid: Number(pid), restarts: Number(restarts), running: running === "true" };
}

/** Waits until the coordinator lists a pending collective that every one of `members` joined. */
async function waitJoined(d: Deployment, coordinator: number, members: number[]): Promise<void> {
  await until(`ranks ${members.join(", ")} to wait in agreement at rank ${coordinator}`, async () => {
    const rec = await d.get(coordinator, "/debug/recent?limit=1", 3000);
    const pending: { joined: number[] }[] = rec.body?.pending ?? [];
    return pending.some((p) => members.every((r) => p.joined.includes(r))) ? true : null;
  });
}

/** Waits until every rank is ready and the coordinator's view has the whole world with `victim` healthy again. */
async function waitWhole(d: Deployment, victim: number, killedAt: number): Promise<number> {
  return until(`the world of ${d.world} to be whole again after rank ${victim}'s crash`, async () => {
    for (const r of ranksOf(d.world)) {
      const h = await d.get(r, "/health", 3000);
      if (h.status !== 200 || h.body?.ready !== true) return null;
    }
    const c = await clusterAt(d, victim);
    const rec = c.ranks?.find((x: any) => x.rank === victim);
    const whole = (c.active_ranks as number[]).every((a) => a === 1) && rec?.state === "healthy" && (rec?.changed_at_ms ?? 0) >= killedAt;
    return whole ? c.coordinator : null;
  });
}

/** Full-world allreduce until one completes exactly (a bounded number of tries). */
async function firstWorldCollective(d: Deployment): Promise<string | null> {
  let problem: string | null = "not tried";
  for (let attempt = 0; attempt < 5 && problem !== null; attempt++) {
    const world = ranksOf(d.world);
    const { inputs, replies } = allreduce(d, world, 10_000);
    problem = wrongSum(await replies, inputs, world);
    if (problem) d.log(`heal: full-world allreduce attempt ${attempt + 1}: ${problem}`);
  }
  return problem;
}

/**
 * Kills `victim`'s container from the host while the other ranks wait in an allreduce for it;
 * checks that the survivors finish it among themselves, that Docker restarts the container, that
 * the rank rejoins by itself and that a full-world allreduce is exact again. Returns the times.
 */
export async function crashAndHeal(d: Deployment, victim: number): Promise<HealTimes | null> {
  const tag = `crash of rank ${victim}'s container`;
  const survivors = ranksOf(d.world).filter((r) => r !== victim);
  const coordinator = (await clusterAt(d, survivors[0]!)).coordinator as number;
  const id = d.containerId(victim);
  const before = containerState(d, id);
  if (!(before.pid > 0 && before.running)) {
    d.check(`${tag}: container running`, false, JSON.stringify(before));
    return null;
  }
  const waiting = allreduce(d, survivors, 60_000);
  await waitJoined(d, coordinator, survivors);
  const killedAt = Date.now();
  process.kill(before.pid, "SIGKILL");
  const survivorsProblem = wrongSum(await waiting.replies, waiting.inputs, survivors);
  const survivorsDoneMs = Date.now() - killedAt;
  d.check(`${tag} (coordinator ${coordinator}): the allreduce the survivors waited in completes among ranks ${survivors.join(",")}, exact`, survivorsProblem === null, survivorsProblem ?? "");
  const restartedMs = await until(`Docker to restart rank ${victim}'s container`, async () => {
    const s = containerState(d, id);
    return s.restarts > before.restarts && s.running ? Date.now() - killedAt : null;
  });
  d.check(`${tag}: Docker restarted it (restart policy on-failure)`, true);
  const newCoordinator = await waitWhole(d, victim, killedAt);
  const wholeMs = Date.now() - killedAt;
  d.check(`${tag}: rank ${victim} rejoined by itself, all ${d.world} ranks active and ready (coordinator ${newCoordinator})`, true);
  const problem = await firstWorldCollective(d);
  const firstWorldMs = Date.now() - killedAt;
  d.check(`${tag}: allreduce across all ${d.world} ranks exact again`, problem === null, problem ?? "");
  if (victim === coordinator) {
    const f = (await clusterAt(d, survivors.at(-1)!)).failovers?.at(-1);
    d.check(`${tag}: the survivors elected rank ${survivors[0]} as coordinator`, f?.coordinator === survivors[0] && newCoordinator === survivors[0], JSON.stringify(f));
    if (f) d.log(`heal: failover after rank ${victim}'s crash: detected ${f.detected_at_ms - killedAt} ms, new coordinator followed ${f.resumed_at_ms - killedAt} ms after the kill`);
  }
  const times = { victim, survivorsDoneMs, restartedMs, wholeMs, firstWorldMs };
  d.log(
    `heal: rank ${victim} crashed: survivors' allreduce done ${survivorsDoneMs} ms, container restarted ${restartedMs} ms, world whole ${wholeMs} ms, first full-world allreduce ${firstWorldMs} ms after the kill`,
  );
  return problem === null && survivorsProblem === null ? times : null;
}

/**
 * `docker kill` of `victim`: an operator's stop, so Docker leaves the container stopped (no
 * restart policy applies). The job shrinks and goes on: the allreduce the others waited in
 * completes among them, exact.
 */
export async function shrinkAfterDockerKill(d: Deployment, victim: number): Promise<void> {
  const survivors = ranksOf(d.world).filter((r) => r !== victim);
  const coordinator = (await clusterAt(d, survivors[0]!)).coordinator as number;
  const id = d.containerId(victim);
  const waiting = allreduce(d, survivors, 60_000);
  await waitJoined(d, coordinator, survivors);
  const killedAt = Date.now();
  const k = d.docker(["kill", id]);
  d.check(`docker kill rank ${victim}`, k.code === 0, k.err.trim());
  const problem = wrongSum(await waiting.replies, waiting.inputs, survivors);
  d.check(`after docker kill of rank ${victim}: the waiting allreduce completes among ranks ${survivors.join(",")}, exact`, problem === null, problem ?? "");
  const c = await clusterAt(d, survivors[0]!);
  const rec = c.ranks?.find((x: any) => x.rank === victim);
  d.check(`after docker kill of rank ${victim}: it is failed in the survivors' view`, rec?.state === "failed" && rec?.active === false, JSON.stringify(rec));
  const s = containerState(d, id);
  d.log(`heal: docker kill of rank ${victim}: survivors done ${Date.now() - killedAt} ms after; container running=${s.running} restarts=${s.restarts} (Docker applies no restart policy after docker kill)`);
}
