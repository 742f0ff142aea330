// N rank services in this process over a FakeHub (real HTTP, real control links, fake bytes).
import { RankService, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TENSOR_BYTES, type ServiceConfig } from "../../src/server/service";
import { FakeHub } from "./fake-dataplane";

export interface InprocWorld {
  services: RankService[];
  urls: string[];
  hub: FakeHub;
  stop(): Promise<void>;
}

export async function startInprocWorld(n: number, over: Partial<ServiceConfig> = {}): Promise<InprocWorld> {
  const hub = new FakeHub();
  const base = (rank: number, masterPort: number): ServiceConfig => ({
    rank,
    worldSize: n,
    worldSizeMax: n,
    masterHost: "127.0.0.1",
    masterPort,
    host: "127.0.0.1",
    port: 0,
    device: "cpu",
    join: false,
    maxBodyBytes: DEFAULT_MAX_BODY_BYTES,
    maxTensorBytes: DEFAULT_MAX_TENSOR_BYTES,
    rendezvousTimeoutMs: 20_000,
    dataPlaneFactory: (o) => hub.create(o),
    ...over,
  });
  const s0 = new RankService(base(0, 0));
  const services: RankService[] = [s0];
  await startWithOwnPort(s0);
  for (let r = 1; r < n; r++) {
    const s = new RankService(base(r, s0.port));
    services.push(s);
    await s.start();
  }
  await Promise.all(services.map((s) => s.whenReady()));
  return {
    services,
    hub,
    urls: services.map((s) => s.url),
    async stop() {
      await Promise.all(services.map((s) => s.stop()));
    },
  };
}

async function startWithOwnPort(s: RankService): Promise<void> {
  // port 0 => Bun picks one; the master address is rank 0's own, known only after listen()
  const origStart = s.start.bind(s);
  const cfg = s.config;
  Object.defineProperty(cfg, "masterPort", {
    get: () => s.server?.port ?? 0,
    configurable: true,
  });
  await origStart();
}
