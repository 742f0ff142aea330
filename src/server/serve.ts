// `moonring serve`: one rank service in this process, until SIGINT/SIGTERM (or, with
// exitWithParent, until the launcher's stdin pipe closes: a killed launcher leaves no ranks).
import { networkInterfaces } from "node:os";
import { DataPlaneUnavailable } from "./dataplane";
import { RankService, type ServiceConfig } from "./service";
import { RendezvousRefused } from "../control/rendezvous";
import { writeLine } from "../util/log";
import { isLoopback } from "./peer-user";

export interface ServeOptions {
  exitWithParent: boolean;
}

/** Address other ranks can reach this one at when bound to a wildcard address. */
export function defaultAdvertiseHost(bindHost: string): string {
  if (bindHost !== "0.0.0.0" && bindHost !== "::") return bindHost;
  if (process.env.POD_IP) return process.env.POD_IP;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return "127.0.0.1";
}

export async function serveMain(config: ServiceConfig, opts: ServeOptions): Promise<void> {
  const svc = new RankService(config);
  let stopping = false;
  const stop = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    svc.log.info(`stopping (${why})`);
    const force = setTimeout(() => process.exit(code), 3000);
    force.unref?.();
    await svc.stop().catch(() => {});
    process.exit(code);
  };
  process.on("SIGINT", () => void stop("SIGINT", 0));
  process.on("SIGTERM", () => void stop("SIGTERM", 0));
  if (opts.exitWithParent) {
    process.stdin.on("end", () => void stop("launcher went away", 0));
    process.stdin.on("close", () => void stop("launcher went away", 0));
    process.stdin.resume();
  }
  svc.onFatal = (e) => {
    const refused = e instanceof RendezvousRefused;
    writeLine(process.stderr, `moonring serve: rank ${config.rank}: ${e.message}\n`);
    void stop(refused ? "rendezvous refused" : "rendezvous failed", refused ? 3 : 1);
  };
  process.on("uncaughtException", (e) => {
    svc.log.error(`uncaught exception (kept running): ${e.stack ?? e}`);
  });
  process.on("unhandledRejection", (e) => {
    svc.log.error(`unhandled rejection (kept running): ${(e as Error)?.stack ?? e}`);
  });
  const insecure = svc.securityWarning();
  if (insecure) {
    const loud = !isLoopback(config.host) && config.host !== "localhost";
    writeLine(process.stderr, loud ? `\nmoonring serve: rank ${config.rank}: SECURITY WARNING: ${insecure}\n\n` : `moonring serve: rank ${config.rank}: warning: ${insecure}\n`);
  }
  try {
    await svc.start();
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof DataPlaneUnavailable) {
      writeLine(process.stderr, `moonring serve: rank ${config.rank}: ${err.message}\n`);
    } else if (err.code === "EADDRINUSE" || /address already in use|EADDRINUSE/i.test(err.message)) {
      writeLine(process.stderr, `moonring serve: rank ${config.rank}: port ${config.port} on ${config.host} is already in use\n`);
    } else {
      writeLine(process.stderr, `moonring serve: rank ${config.rank}: could not start: ${err.stack ?? err.message}\n`);
    }
    await svc.stop().catch(() => {});
    process.exit(2);
  }
}
