// Issue 18 item 11: an interrupted first bootstrap left a half-made .tools/venv without pip, and
// every later run failed (".tools/venv/bin/pip: not found") until someone deleted .tools; two
// bootstraps at once broke each other. scripts/venv.sh builds a venv under a temporary name and
// renames it into place, under a lock; bootstrap.sh uses it and runs under a per-checkout lock.
import { afterAll, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../support/launch-world";

const dir = mkdtempSync(join(tmpdir(), "moonring-venv-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }), 60_000);

/** Runs `ensure_venv DIR` from scripts/venv.sh in sh. */
function ensure(venv: string) {
  return Bun.spawn(["sh", "-c", `. "${ROOT}scripts/venv.sh" && ensure_venv "$1"`, "sh", venv], { stdout: "pipe", stderr: "pipe" });
}

function pipWorks(venv: string): boolean {
  return Bun.spawnSync([`${venv}/bin/python`, "-m", "pip", "--version"]).exitCode === 0;
}

test("a half-made venv (no pip) is rebuilt; a working one, symlinked, is kept as is", async () => {
  const venv = join(dir, "half");
  expect(Bun.spawnSync(["python3", "-m", "venv", "--without-pip", venv]).exitCode).toBe(0); // what an interrupted run left
  expect(pipWorks(venv)).toBe(false);
  const p = ensure(venv);
  expect(await p.exited).toBe(0);
  expect(pipWorks(venv)).toBe(true);
  // a worktree's .tools/venv links to a complete venv elsewhere: accepted, link untouched
  const link = join(dir, "link");
  symlinkSync(venv, link);
  const q = ensure(link);
  expect(await q.exited).toBe(0);
  expect(lstatSync(link).isSymbolicLink()).toBe(true);
  expect(readlinkSync(link)).toBe(venv);
  expect(await new Response(q.stderr).text()).not.toContain("creating");
}, 120_000);

test("killed while creating: nothing half-made is left; then two runs at once make it once", async () => {
  const venv = join(dir, "killed");
  const p = ensure(venv);
  // wait (with a deadline) until the build under a temporary name has started, then kill it
  const until = Date.now() + 60_000;
  const building = () => Bun.spawnSync(["sh", "-c", `ls -d "${venv}".tmp.* 2>/dev/null`]).stdout.toString().trim() !== "";
  while (!building() && Date.now() < until) await Bun.sleep(5);
  expect(building()).toBe(true);
  for (const pid of descendants(p.pid)) process.kill(pid, "SIGKILL"); // python3 -m venv and its children
  p.kill("SIGKILL");
  await p.exited;
  expect(() => lstatSync(venv)).toThrow(); // absent: nothing half-made under the real name
  const [a, b] = [ensure(venv), ensure(venv)];
  expect([await a.exited, await b.exited]).toEqual([0, 0]);
  const said = (await new Response(a.stderr).text()) + (await new Response(b.stderr).text());
  expect(said.match(/creating/g)?.length).toBe(1);
  expect(pipWorks(venv)).toBe(true);
  expect(Bun.spawnSync(["sh", "-c", `ls -d "${venv}".tmp.* 2>/dev/null`]).stdout.toString().trim()).toBe(""); // leftovers cleaned
}, 180_000);

/** The processes below `pid`, as the kernel lists them. */
function descendants(pid: number): number[] {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
  return kids.flatMap((k) => [...descendants(k), k]);
}

test("bootstrap.sh runs under a per-checkout lock and makes its venv with scripts/venv.sh", () => {
  const text = readFileSync(`${ROOT}scripts/bootstrap.sh`, "utf8");
  expect(text).toContain('exec flock -w 3600 "$tools/.bootstrap.lock"');
  expect(text).toContain('ensure_venv "$venv"');
  expect(text).not.toContain('"$venv/bin/pip"');
});
