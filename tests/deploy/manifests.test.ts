// Static checks of the deployment files (no Docker, no cluster): compose.yaml, the k8s
// manifests, the Dockerfile and the entrypoint agree with each other and with what the rank
// service needs. The live checks are in tests/deploy/run.ts (npm run test:deploy) and
// tests/deploy/k8s-validate (typed Kubernetes decode of the rendered kustomizations).
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dir, "../..");
const read = (p: string) => readFileSync(join(root, p), "utf8");
const yaml = (p: string): any => Bun.YAML.parse(read(p));
const yamlDocs = (p: string): any[] => {
  const parsed = Bun.YAML.parse(read(p));
  return Array.isArray(parsed) ? parsed : [parsed];
};

describe("deploy/compose.yaml", () => {
  const compose = yaml("deploy/compose.yaml");
  const ranks = ["rank0", "rank1", "rank2", "rank3"];

  test("four ranks on one user-defined network", () => {
    expect(Object.keys(compose.services).sort()).toEqual(ranks);
    expect(compose.networks.moonring.driver).toBe("bridge");
    for (const r of ranks) expect(compose.services[r].networks).toEqual(["moonring"]);
  });

  test("rank r has RANK r, one world size, rank 0 as master", () => {
    ranks.forEach((name, r) => {
      const env = compose.services[name].environment;
      expect(env.RANK).toBe(String(r));
      expect(env.WORLD_SIZE).toBe(String(ranks.length));
      expect(env.MASTER_ADDR).toBe("rank0");
      expect(env.MASTER_PORT).toBe(env.MOONRING_PORT);
    });
  });

  test("control-plane ports published on 127.0.0.1 only", () => {
    ranks.forEach((name, r) => {
      const ports: string[] = compose.services[name].ports;
      expect(ports).toHaveLength(1);
      expect(ports[0]).toBe(`127.0.0.1:\${MOONRING_HOST_PORT_${r}:-${29500 + r}}:29500`);
    });
  });

  test("ranks 1..3 start once rank 0 is healthy; rank 0's gate does not need the others", () => {
    for (const name of ranks.slice(1)) {
      expect(compose.services[name].depends_on).toEqual({ rank0: { condition: "service_healthy" } });
    }
    expect(compose.services.rank0.depends_on).toBeUndefined();
    // rank 0 is *ready* only after every rank joined: its gate must accept "answering".
    expect(compose.services.rank0.healthcheck.test).toEqual(["CMD", "moonring-entrypoint", "health", "--live"]);
    expect(compose.services.rank1.healthcheck.test).toEqual(["CMD", "moonring-entrypoint", "health"]);
  });
});

describe("README's compose commands with the compose installed here (Debian's docker-compose v1)", () => {
  test("every docker-compose line of the README names deploy/compose.yaml, and v1 accepts the file", () => {
    const inst = spawnSync("sh", [join(root, "scripts/apt-tools.sh"), "docker-compose", "docker-compose"], { encoding: "utf8", timeout: 600_000 });
    const lines = read("README.md").split("\n").map((l) => l.trim()).filter((l) => /^docker-compose\s/.test(l));
    expect(lines.length).toBeGreaterThanOrEqual(2);
    expect(read("README.md")).not.toMatch(/^\s*docker compose /m); // v2 syntax only in prose
    if (inst.status !== 0) {
      console.warn(`SKIP docker-compose config check: could not install docker-compose: ${inst.stderr.slice(-300)}`);
      return;
    }
    for (const l of lines) {
      const args = l.replace(/#.*$/, "").trim().split(/\s+/).slice(1);
      const f = args.indexOf("-f");
      expect(args[f + 1]).toBe("deploy/compose.yaml");
      // the same project and file, `config -q` instead of the action: v1 parses and validates it
      const r = spawnSync("docker-compose", [...args.slice(0, f + 2), "config", "-q"], { cwd: root, encoding: "utf8", timeout: 60_000 });
      expect([l, r.status, r.stderr.trim()]).toEqual([l, 0, ""]);
    }
    const cfg = spawnSync("docker-compose", ["-f", "deploy/compose.yaml", "config"], { cwd: root, encoding: "utf8", timeout: 60_000 });
    expect(cfg.stdout).toContain(`image: moonring:${JSON.parse(read("package.json")).version}`);
    expect(cfg.stdout).not.toContain(":latest");
  }, 620_000);
});

describe("deploy/k8s", () => {
  const svc = yamlDocs("deploy/k8s/base/service.yaml")[0];
  const ss = yamlDocs("deploy/k8s/base/statefulset.yaml")[0];
  const c = ss.spec.template.spec.containers[0];
  const env = Object.fromEntries(c.env.map((e: any) => [e.name, e.value ?? e.valueFrom]));

  test("headless Service that resolves ranks before they are ready", () => {
    expect(svc.kind).toBe("Service");
    expect(svc.spec.clusterIP).toBe("None");
    expect(svc.spec.publishNotReadyAddresses).toBe(true);
    expect(ss.spec.serviceName).toBe(svc.metadata.name);
  });

  test("StatefulSet: parallel start, rank from ordinal, master = pod 0", () => {
    expect(ss.kind).toBe("StatefulSet");
    expect(ss.spec.podManagementPolicy).toBe("Parallel");
    expect(env.WORLD_SIZE).toBe(String(ss.spec.replicas));
    expect(env.MOONRING_RANK_FROM_HOSTNAME).toBe("1");
    expect(env.POD_NAME).toEqual({ fieldRef: { fieldPath: "metadata.name" } });
    expect(env.MASTER_ADDR.startsWith(`${ss.metadata.name}-0.${svc.metadata.name}.`)).toBe(true);
    for (const [k, v] of Object.entries(ss.spec.selector.matchLabels)) {
      expect(ss.spec.template.metadata.labels[k]).toBe(v);
      expect(svc.spec.selector[k]).toBe(v);
    }
  });

  test("readiness on /health, liveness and startup on /livez, requests and limits, pinned tag, non-root", () => {
    expect(c.readinessProbe.httpGet.path).toBe("/health");
    expect(c.livenessProbe.httpGet.path).toBe("/livez");
    expect(c.startupProbe.httpGet.path).toBe("/livez");
    expect(c.resources.requests.cpu).toBeDefined();
    expect(c.resources.requests.memory).toBeDefined();
    expect(c.resources.limits.cpu).toBeDefined();
    expect(c.resources.limits.memory).toBeDefined();
    expect(c.image).toMatch(/^moonring:\d+\.\d+\.\d+$/);
    expect(c.image).toBe(`moonring:${JSON.parse(read("package.json")).version}`);
    expect(ss.spec.template.spec.securityContext.runAsNonRoot).toBe(true);
    expect(c.securityContext.readOnlyRootFilesystem).toBe(true);
  });

  test("ServiceMonitor scrapes every rank's /metrics on the http port, with the token's Secret", () => {
    const k = yaml("deploy/k8s/monitoring/kustomization.yaml");
    const sm = yaml(`deploy/k8s/monitoring/${k.resources.find((r: string) => r.includes("servicemonitor"))}`);
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.kind).toBe("ServiceMonitor");
    for (const [key, v] of Object.entries(sm.spec.selector.matchLabels)) expect(svc.metadata.labels[key]).toBe(v);
    expect(sm.spec.endpoints).toEqual([
      expect.objectContaining({ port: svc.spec.ports[0].name, path: "/metrics", authorization: { type: "Bearer", credentials: { name: "moonring-token", key: "token", optional: true } } }),
    ]);
    const annotations = ss.spec.template.metadata.annotations;
    expect(annotations["prometheus.io/port"]).toBe(String(c.ports.find((p: any) => p.name === "http").containerPort));
  });

  test("GPU overlay asks for one nvidia.com/gpu per rank", () => {
    const k = yaml("deploy/k8s/gpu/kustomization.yaml");
    expect(k.resources).toEqual(["../base"]);
    const patch = yaml(`deploy/k8s/gpu/${k.patches[0].path}`);
    const pc = patch.spec.template.spec.containers[0];
    expect(pc.name).toBe(c.name);
    expect(pc.resources.limits["nvidia.com/gpu"]).toBe("1");
  });
});

describe("Dockerfile and entrypoint", () => {
  const dockerfile = read("Dockerfile");

  test("public default base image, multi-stage, non-root, healthcheck, entrypoint", () => {
    expect(dockerfile).toMatch(/^ARG BASE_IMAGE=debian:bookworm-slim$/m);
    expect(dockerfile).toMatch(/^FROM \$\{BASE_IMAGE\} AS build$/m);
    expect(dockerfile).toMatch(/^FROM \$\{BASE_IMAGE\} AS runtime$/m);
    expect(dockerfile).toMatch(/scripts\/bootstrap\.sh --build/);
    expect(dockerfile).toMatch(/^USER moonring:moonring$/m);
    expect(dockerfile).toMatch(/^HEALTHCHECK .*\n\s+CMD \["moonring-entrypoint", "health"\]$/m);
  });

  test("entrypoint takes the rank from the pod ordinal, else leaves RANK to serve", () => {
    const ep = join(root, "deploy/docker-entrypoint.sh");
    // `serve` with the final exec replaced by printing RANK and the arguments.
    const script = readFileSync(ep, "utf8").replace('exec bun src/cli.ts "$@"', 'echo "RANK=${RANK:-} $*"; exit 0');
    expect(script).toContain('echo "RANK=');
    const run = (env: Record<string, string>, ...extra: string[]) =>
      spawnSync("sh", ["-s", "serve", ...extra], {
        input: script,
        env: { PATH: process.env.PATH!, MOONRING_APP: root, ...env },
        encoding: "utf8",
      });
    const fromPod = run({ POD_NAME: "moonring-3", MOONRING_RANK_FROM_HOSTNAME: "1" }, "--device", "cuda");
    expect(fromPod.status).toBe(0);
    expect(fromPod.stdout.trim()).toBe("RANK=3 serve --device cuda");
    const explicit = run({ RANK: "1", POD_NAME: "moonring-3", MOONRING_RANK_FROM_HOSTNAME: "1" });
    expect(explicit.stdout.trim()).toBe("RANK=1 serve");
    const off = run({ POD_NAME: "moonring-3" });
    expect(off.stdout.trim()).toBe("RANK= serve");
    const bad = run({ POD_NAME: "moonring", MOONRING_RANK_FROM_HOSTNAME: "1" });
    expect(bad.status).toBe(64);
    expect(bad.stderr).toContain("cannot take a rank from host name 'moonring'");
  });
});
