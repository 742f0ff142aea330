#!/usr/bin/env bun
// moonring CLI: argument parsing only; the work lives in src/server/{serve,launch}.ts.
//   launch --nproc N --port P [--device cpu|cuda] [--host 127.0.0.1] [--max-world-size M]
//   serve  --rank R --world-size N --master HOST:PORT --port P [--join]
//   bench  ...
import { localRankOf, type LocalRank } from "./util/local-rank";
import { bytesFlag, helpText, intFlag, parseFlags, UsageError, type FlagSpec } from "./util/args";
import { parseHostPort } from "./util/net";
import { parseEtcdUrl } from "./control/etcd";
import { WORLD_SIZE_MAX } from "./limits";
import { readFileSync } from "node:fs";

const COMMON_LIMITS: Record<string, FlagSpec> = {
  "max-body-bytes": { type: "string", help: "largest request body (e.g. 1G; env MOONRING_MAX_BODY_BYTES; default 1G)" },
  "max-tensor-bytes": { type: "string", help: "largest tensor (or list of tensors) in one call (env MOONRING_MAX_TENSOR_BYTES; default 512M)" },
  "max-pending-calls": { type: "string", help: "collectives and p2p calls a rank holds at once; more are 429 (env MOONRING_MAX_PENDING_CALLS; default 1024)" },
  "heartbeat-interval-ms": { type: "string", help: "control-plane heartbeat period, rank <-> rank 0 (env MOONRING_HEARTBEAT_INTERVAL_MS; default 500)" },
  "heartbeat-timeout-ms": {
    type: "string",
    help: "silence after which the coordinator removes a rank as failed, and the ranks elect a new coordinator (env MOONRING_HEARTBEAT_TIMEOUT_MS; default 2000)",
  },
  rejoin: {
    type: "string",
    help: "auto: a restarted rank (same --rank) rejoins the running world and becomes active by itself; manual: it needs --join and POST /membership/activate (env MOONRING_REJOIN; default manual)",
  },
};

/** Local access: how programs of this host reach a rank (socket) and map its host buffers. */
const LOCAL_FLAGS: Record<string, FlagSpec> = {
  unix: { type: "string", help: "also serve the API on this Unix-domain socket; {rank} in PATH is replaced by the rank (env MOONRING_UNIX; launch: PATH.{rank} when PATH has no {rank})" },
  "shm-group": { type: "string", help: "group (name or gid) that may map host buffers too (files 0660); default: the owner only (0600) (env MOONRING_SHM_GROUP)" },
};

function rejoin(flags: Record<string, string | boolean | undefined>): "auto" | "manual" {
  const v = flags.rejoin ?? env("MOONRING_REJOIN") ?? "manual";
  if (v !== "auto" && v !== "manual") throw new UsageError(`--rejoin must be auto or manual, got ${JSON.stringify(v)}`);
  return v;
}

/** --rendezvous: null for the built-in one, the etcd endpoints and job otherwise. */
function rendezvousStore(flags: Record<string, string | boolean | undefined>): { endpoints: string[]; job: string } | null {
  const v = (flags.rendezvous as string | undefined) ?? env("MOONRING_RENDEZVOUS") ?? "builtin";
  if (v === "builtin") return null;
  if (!v.startsWith("etcd://")) throw new UsageError(`--rendezvous must be builtin or etcd://HOST:PORT[,HOST:PORT...][/JOB], got ${JSON.stringify(v)}`);
  try {
    return parseEtcdUrl(v);
  } catch (e) {
    throw new UsageError(`--rendezvous: ${(e as Error).message}`);
  }
}

const SERVE_FLAGS: Record<string, FlagSpec> = {
  rank: { type: "string", help: "this rank (env RANK)" },
  "world-size": { type: "string", help: "number of ranks that rendezvous (env WORLD_SIZE)" },
  master: { type: "string", help: "rank 0's control-plane HOST:PORT (env MASTER_ADDR, MASTER_PORT)" },
  port: { type: "string", help: "control-plane (HTTP) port (env MOONRING_PORT; default 29500 + rank)" },
  host: { type: "string", help: "bind address (env MOONRING_HOST; default 127.0.0.1)" },
  "advertise-host": { type: "string", help: "address other ranks use to reach this one (env MOONRING_ADVERTISE_HOST; default: --host, or this host's IP when --host is 0.0.0.0)" },
  "data-port": { type: "string", help: "data-plane port (env MOONRING_DATA_PORT; default: any free port)" },
  device: { type: "string", help: "cpu or cuda (default cpu)" },
  join: { type: "boolean", help: "join a running world: wait in state awaiting until activated" },
  "max-world-size": { type: "string", help: "slots of the world (>= world size; default = world size)" },
  "rendezvous-timeout": { type: "string", help: "seconds to keep trying to reach rank 0 (default 300)" },
  rendezvous: {
    type: "string",
    help: "builtin (default: rank 0's HTTP, --master) or etcd://HOST:PORT[,HOST:PORT...][/JOB]: rendezvous, coordinator leadership and membership epochs in etcd (env MOONRING_RENDEZVOUS)",
  },
  "exit-with-parent": { type: "boolean", help: "exit when stdin closes (used by launch)" },
  ...COMMON_LIMITS,
  ...LOCAL_FLAGS,
  help: { type: "boolean", help: "show this help" },
};

const LAUNCH_FLAGS: Record<string, FlagSpec> = {
  nproc: { type: "string", help: "number of ranks to start on this host" },
  port: { type: "string", help: "rank r serves HTTP on PORT + r (default 29500)" },
  host: { type: "string", help: "bind address (default 127.0.0.1)" },
  device: { type: "string", help: "cpu or cuda (default cpu)" },
  "max-world-size": { type: "string", help: "slots for joiners: ranks NPROC..M-1 may join later with serve --join" },
  "ready-timeout": { type: "string", help: "seconds to wait for the world to be ready (default 120)" },
  ...COMMON_LIMITS,
  ...LOCAL_FLAGS,
  help: { type: "boolean", help: "show this help" },
};

const TOP_HELP = `moonring: collective communication as a service

Usage:
  moonring launch --nproc N --port P [--device cpu|cuda] [--host 127.0.0.1] [--max-world-size M]
  moonring serve  --rank R --world-size N --master HOST:PORT --port P [--join]
  moonring bench  --nproc N --op OP [--min-bytes B] [--max-bytes B] [--device cpu|cuda] [--json]
                  [--via native|rest] [--check] [--plot FILE.svg]   (bench --help for all flags)

  moonring COMMAND --help     flags of a command

Environment: MOONRING_TOKEN (bearer token for REST and the data-plane handshake; launch makes a
per-job one when it is unset, see docs/api-extensions.md "Security"),
MOONRING_LOG (debug|info|warn|error), MOONRING_TRANSPORT, MOONRING_LIB.
The REST API: docs/api-contract.md; a running rank serves GET /openapi.json.`;

function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === "" ? undefined : v;
}

function localRankOrUsage(rank: number): LocalRank {
  try {
    return localRankOf(rank);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function device(v: string | boolean | undefined): "cpu" | "cuda" {
  const d = v === undefined ? "cpu" : v;
  if (d !== "cpu" && d !== "cuda") throw new UsageError(`--device must be cpu or cuda, got ${JSON.stringify(d)}`);
  return d;
}

function heartbeat(flags: Record<string, string | boolean | undefined>) {
  const interval = intFlag(flags["heartbeat-interval-ms"] ?? env("MOONRING_HEARTBEAT_INTERVAL_MS"), "heartbeat-interval-ms", { min: 10, max: 60_000 }) ?? 500;
  const timeout = intFlag(flags["heartbeat-timeout-ms"] ?? env("MOONRING_HEARTBEAT_TIMEOUT_MS"), "heartbeat-timeout-ms", { min: 50, max: 600_000 }) ?? 2000;
  if (timeout <= interval) throw new UsageError(`--heartbeat-timeout-ms (${timeout}) must be greater than --heartbeat-interval-ms (${interval})`);
  return { heartbeatIntervalMs: interval, heartbeatTimeoutMs: timeout };
}

function limits(flags: Record<string, string | boolean | undefined>) {
  return {
    maxBodyBytes: bytesFlag(flags["max-body-bytes"] ?? env("MOONRING_MAX_BODY_BYTES"), "max-body-bytes") ?? 1024 ** 3,
    maxTensorBytes: bytesFlag(flags["max-tensor-bytes"] ?? env("MOONRING_MAX_TENSOR_BYTES"), "max-tensor-bytes") ?? 512 * 1024 ** 2,
    maxPendingCalls: intFlag(flags["max-pending-calls"] ?? env("MOONRING_MAX_PENDING_CALLS"), "max-pending-calls", { min: 1, max: 1_000_000 }) ?? 1024,
  };
}

function localAccess(flags: Record<string, string | boolean | undefined>, rank: number) {
  const unix = (flags.unix as string | undefined) ?? env("MOONRING_UNIX");
  if (unix !== undefined && unix.trim() === "") throw new UsageError("--unix needs a path");
  const group = (flags["shm-group"] as string | undefined) ?? env("MOONRING_SHM_GROUP");
  return { unixPath: unix?.replaceAll("{rank}", String(rank)), shmGroup: group === undefined ? null : groupId(group) };
}

/** A group name (from /etc/group) or a numeric gid -> the gid. */
function groupId(spec: string): number {
  if (/^\d+$/.test(spec)) return Number(spec);
  let text = "";
  try {
    text = readFileSync("/etc/group", "utf8");
  } catch {
    // no /etc/group: only numeric gids
  }
  for (const line of text.split("\n")) {
    const [name, , gid] = line.split(":");
    if (name === spec && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new UsageError(`--shm-group: no group ${JSON.stringify(spec)} (give a name from /etc/group or a numeric gid)`);
}

async function serve(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, SERVE_FLAGS);
  if (flags.help) {
    console.log(helpText("Usage: moonring serve --rank R --world-size N --master HOST:PORT --port P [--join]\n\nStarts one rank service (for containers and multi-host). The torchrun variables RANK,\nWORLD_SIZE, MASTER_ADDR, MASTER_PORT are read when the flags are absent.", SERVE_FLAGS));
    return 0;
  }
  const rank = intFlag(flags.rank ?? env("RANK"), "rank", { min: 0, max: 63 });
  const worldSize = intFlag(flags["world-size"] ?? env("WORLD_SIZE"), "world-size", { min: 1, max: WORLD_SIZE_MAX });
  if (rank === undefined) throw new UsageError("serve needs --rank (or RANK)");
  if (worldSize === undefined) throw new UsageError("serve needs --world-size (or WORLD_SIZE)");
  const maxWorldSize = intFlag(flags["max-world-size"], "max-world-size", { min: worldSize, max: WORLD_SIZE_MAX }) ?? worldSize;
  if (rank >= maxWorldSize) throw new UsageError(`--rank ${rank} is out of range for world size ${maxWorldSize}`);
  const port = intFlag(flags.port ?? env("MOONRING_PORT"), "port", { min: 0, max: 65535 }) ?? 29500 + rank;
  const host = (flags.host as string | undefined) ?? env("MOONRING_HOST") ?? "127.0.0.1";
  const etcd = rendezvousStore(flags);
  let masterText = flags.master as string | undefined;
  if (masterText === undefined && env("MASTER_ADDR")) masterText = `${env("MASTER_ADDR")}:${env("MASTER_PORT") ?? "29500"}`;
  if (masterText === undefined) {
    // with etcd the ranks find the coordinator there: no master address needed
    if (rank !== 0 && !etcd) throw new UsageError("serve needs --master HOST:PORT (or MASTER_ADDR and MASTER_PORT)");
    masterText = `${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
  }
  let master: { host: string; port: number };
  try {
    master = parseHostPort(masterText, 29500);
  } catch (e) {
    throw new UsageError(`--master: ${(e as Error).message}`);
  }
  const { serveMain, defaultAdvertiseHost } = await import("./server/serve");
  const advertiseHost = (flags["advertise-host"] as string | undefined) ?? env("MOONRING_ADVERTISE_HOST") ?? defaultAdvertiseHost(host);
  if (rank === 0 && master.port !== port && !etcd) {
    process.stderr.write(`moonring serve: warning: rank 0 serves on port ${port} but --master says ${master.port}\n`);
  }
  await serveMain(
    {
      rank,
      worldSize,
      worldSizeMax: maxWorldSize,
      masterHost: master.host,
      masterPort: master.port,
      host,
      port,
      advertiseHost,
      dataPort: intFlag(flags["data-port"] ?? env("MOONRING_DATA_PORT"), "data-port", { min: 0, max: 65535 }),
      ...(await jobToken(master)),
      device: device(flags.device ?? env("MOONRING_DEVICE")),
      localRank: localRankOrUsage(rank),
      join: flags.join === true,
      rejoin: rejoin(flags),
      ...limits(flags),
      ...heartbeat(flags),
      clusterId: env("MOONRING_CLUSTER_ID") ?? (etcd ? `moonring@etcd/${etcd.job || "default"}` : undefined),
      ...(etcd ? { etcd } : {}),
      rendezvousTimeoutMs: (intFlag(flags["rendezvous-timeout"], "rendezvous-timeout", { min: 1 }) ?? 300) * 1000,
      ...localAccess(flags, rank),
    },
    { exitWithParent: flags["exit-with-parent"] === true },
  );
  return -1; // keeps running
}

/**
 * MOONRING_TOKEN; else, for a rank 0 on this host, the secret of a job this user launched there
 * (a replacement or new rank started with serve --join next to `launch`).
 */
async function jobToken(master: { host: string; port: number }): Promise<{ token?: string; localUserAuth: boolean }> {
  const token = env("MOONRING_TOKEN");
  const localUserAuth = env("MOONRING_LOCAL_USER_AUTH") === "1";
  if (token) return { token, localUserAuth };
  const { isLoopback } = await import("./server/peer-user");
  if (!isLoopback(master.host) && master.host !== "localhost") return { localUserAuth: false };
  const { readLaunchToken } = await import("./server/launch");
  const launched = readLaunchToken(master.port);
  return launched ? { token: launched, localUserAuth: true } : { localUserAuth: false };
}

async function launch(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, LAUNCH_FLAGS);
  if (flags.help) {
    console.log(helpText("Usage: moonring launch --nproc N --port P [--device cpu|cuda] [--host 127.0.0.1] [--max-world-size M]\n\nStarts N rank services on this host (rank r on port P + r), prints `rank R ready http://HOST:PORT`\nper rank once the world is ready, and stays in the foreground; SIGINT/SIGTERM stop every rank.", LAUNCH_FLAGS));
    return 0;
  }
  const nproc = intFlag(flags.nproc, "nproc", { min: 1, max: WORLD_SIZE_MAX });
  if (nproc === undefined) throw new UsageError("launch needs --nproc N");
  const port = intFlag(flags.port, "port", { min: 1, max: 65535 }) ?? 29500;
  if (port + nproc - 1 > 65535) throw new UsageError(`--port ${port} + ${nproc} ranks runs past port 65535`);
  const maxWorldSize = intFlag(flags["max-world-size"], "max-world-size", { min: nproc, max: WORLD_SIZE_MAX }) ?? nproc;
  const serveArgs: string[] = [];
  for (const k of ["max-body-bytes", "max-tensor-bytes", "max-pending-calls", "heartbeat-interval-ms", "heartbeat-timeout-ms", "rejoin"]) {
    if (flags[k] !== undefined) serveArgs.push(`--${k}`, String(flags[k]));
  }
  const unix = flags.unix as string | undefined;
  if (unix !== undefined) serveArgs.push("--unix", unix.includes("{rank}") ? unix : `${unix}.{rank}`);
  if (flags["shm-group"] !== undefined) serveArgs.push("--shm-group", String(flags["shm-group"]));
  localAccess(flags, 0); // validate now, not in N children
  limits(flags); // validate now, not in N children
  heartbeat(flags);
  rejoin(flags);
  const { launchMain } = await import("./server/launch");
  return launchMain({
    nproc,
    port,
    host: (flags.host as string | undefined) ?? "127.0.0.1",
    device: device(flags.device),
    maxWorldSize,
    readyTimeoutMs: (intFlag(flags["ready-timeout"], "ready-timeout", { min: 1 }) ?? 120) * 1000,
    serveArgs,
    cliPath: import.meta.path,
  });
}

async function bench(argv: string[]): Promise<number> {
  // The benchmark lives in src/bench/ (nccl-tests table, JSON, --plot); `bench --help` for flags.
  const { benchMain } = await import("./bench/cli");
  return benchMain(argv);
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      console.log(TOP_HELP);
      return cmd === undefined ? 1 : 0;
    case "serve":
      return serve(rest);
    case "launch":
      return launch(rest);
    case "bench":
      return bench(rest);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(cmd)} (launch, serve, bench)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e) => {
    if (e instanceof UsageError) {
      process.stderr.write(`moonring: ${e.message}\n(run moonring --help)\n`);
      process.exit(64);
    }
    process.stderr.write(`moonring: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  },
);
