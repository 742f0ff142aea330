// The dashboard in a real headless Chromium (Debian `chromium`, installed by scripts/apt-tools.sh
// when absent; driven by playwright-core): a launched 4-rank job with the native data plane and a
// token; the page loads through ?token= (cookie) with no console errors, shows the 4 ranks, the
// ops just run and the charts; a rank killed with SIGKILL shows as failed with its cause (waited
// for with a deadline); a screenshot lands in docs/dashboard.png. Skips, saying why, when
// chromium can't be installed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchWorld, ROOT, type LaunchedWorld } from "../support/launch-world";

const TOKEN = `dash-${crypto.randomUUID()}`;
const auth = { authorization: `Bearer ${TOKEN}` };
const CHROMIUM = "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
// docs/dashboard.png is refreshed only on request (a test run must not change tracked files).
const SCREENSHOT = process.env.MOONRING_UPDATE_SCREENSHOT === "1" ? join(ROOT, "docs/dashboard.png") : join(tmpdir(), `moonring-dashboard-${process.pid}.png`);

function chromiumReady(): string | null {
  const r = spawnSync("sh", [join(ROOT, "scripts/apt-tools.sh"), "chromium", "chromium"], { encoding: "utf8", timeout: 900_000 });
  if (r.status !== 0) return `chromium could not be installed (apt-get as root or passwordless sudo needed): ${r.stderr.trim().slice(-300)}`;
  return null;
}

const skipWhy = chromiumReady();
if (skipWhy) console.warn(`SKIP tests/browser/dashboard.test.ts: ${skipWhy}`);

describe.skipIf(skipWhy !== null)("dashboard in headless Chromium", () => {
  let w: LaunchedWorld;
  let profile: string;
  let context: import("playwright-core").BrowserContext;
  const consoleErrors: string[] = [];

  beforeAll(async () => {
    w = await launchWorld(4, { token: TOKEN, args: ["--heartbeat-interval-ms", "100", "--heartbeat-timeout-ms", "1000"] });
    // some traffic for the tables and charts: allreduce of 1 Ki .. 256 Ki floats on every rank
    for (let k = 10; k <= 18; k += 2) {
      const n = 1 << k;
      const answers = await Promise.all(
        w.urls.map((u, r) =>
          fetch(`${u}/collective/allreduce`, {
            method: "POST",
            headers: auth,
            body: JSON.stringify({ tensor: { dtype: "float32", shape: [n], b64: Buffer.from(new Float32Array(n).fill(r + 1).buffer).toString("base64") } }),
          }),
        ),
      );
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    }
    const { chromium } = await import("playwright-core");
    profile = mkdtempSync(join(tmpdir(), "moonring-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      viewport: { width: 1400, height: 1000 },
    });
  }, 120_000);

  afterAll(async () => {
    await context?.close().catch(() => {});
    if (profile) rmSync(profile, { recursive: true, force: true });
    await w?.stop();
  }, 60_000);

  test("rank 0's page: 4 ranks, recent ops, charts, no console errors; a killed rank shows as failed with its cause", async () => {
    // without the token: 401 (same auth as the API); a page of its own (the 401 logs an error)
    const outsider = await context.newPage();
    expect((await outsider.goto(`${w.urls[0]}/dashboard`))!.status()).toBe(401);
    await outsider.close();
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    const res = await page.goto(`${w.urls[0]}/dashboard?token=${TOKEN}`);
    expect(res!.status()).toBe(200);
    expect(page.url()).toBe(`${w.urls[0]}/dashboard`); // the token left the URL
    await page.waitForSelector("#conn.live", { timeout: 10_000 });
    for (let r = 0; r < 4; r++) await page.waitForSelector(`[data-testid=rank-${r}][data-state=healthy]`, { timeout: 10_000 });
    expect(await page.textContent("[data-testid=summary]")).toContain("4 ranks · 4 active · 0 failed");
    // the five allreduces, with sizes, and the charts drew lines
    const recentRows = await page.$$eval("#recent tr", (rows) => rows.slice(1).map((r) => r.textContent ?? ""));
    expect(recentRows.filter((t) => t.includes("allreduce") && t.includes("ok")).length).toBe(5);
    expect(recentRows.some((t) => t.includes("1.0 MiB"))).toBe(true); // 256 Ki floats
    expect(await page.$$eval("#chart-busbw polyline", (l) => l.length)).toBe(1);
    expect(await page.$$eval("#chart-latency polyline", (l) => l.length)).toBe(1);

    // a collective ranks 0..2 have called and rank 3 hasn't: rank 0's page names who is missing
    const stuck = [0, 1, 2].map((r) =>
      fetch(`${w.urls[r]}/collective/barrier`, { method: "POST", headers: auth, body: JSON.stringify({ timeout_ms: 30_000 }) }).then(
        (res) => res.status,
        () => 0,
      ),
    );
    await page.waitForFunction(`/called: 0, 1, 2.*not yet: 3/.test(document.querySelector("#inflight")?.textContent ?? "")`, null, { timeout: 10_000 });

    const killedAt = performance.now();
    process.kill(w.pids[3]!, "SIGKILL");
    await page.waitForSelector("[data-testid=rank-3][data-state=failed]", { timeout: 15_000 });
    const shownMs = performance.now() - killedAt;
    console.log(`dashboard: rank 3 shown failed ${shownMs.toFixed(0)} ms after SIGKILL (heartbeat timeout 1000 ms)`);
    const cause = await page.textContent("[data-testid=failure-rank-3]");
    expect(cause).toContain("rank 3 failed");
    expect(await page.textContent("[data-testid=summary]")).toContain("4 ranks · 3 active · 1 failed");
    const events = await page.$$eval("#events tr", (rows) => rows.map((r) => r.textContent ?? ""));
    expect(events.some((t) => /healthy\s*→\s*failed/.test(t))).toBe(true);
    // the barrier rank 3 never joined ends on the survivors (re-issued among them, or failed): either way it leaves the in-flight list
    expect((await Promise.all(stuck)).every((status) => status > 0)).toBe(true);
    await page.waitForFunction(`!/not yet: 3/.test(document.querySelector("#inflight")?.textContent ?? "")`, null, { timeout: 10_000 });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(statSync(SCREENSHOT).size).toBeGreaterThan(10_000);
    expect(consoleErrors).toEqual([]);
    await page.close();
  }, 60_000);

  test("every rank serves the page: rank 1's shows its own view, and no console errors", async () => {
    const page = await context.newPage();
    const errors: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${w.urls[1]}/dashboard?token=${TOKEN}`);
    await page.waitForSelector("#conn.live", { timeout: 10_000 });
    await page.waitForSelector("[data-testid=rank-1][data-state=healthy]", { timeout: 10_000 });
    expect(await page.textContent("#self")).toBe("1");
    expect(errors).toEqual([]);
    await page.close();
  }, 30_000);
});
