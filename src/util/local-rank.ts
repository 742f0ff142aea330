// Which GPU a rank uses: torchrun's LOCAL_RANK (this process's index among the ranks of its
// host) and LOCAL_WORLD_SIZE (how many ranks the host runs), like torch.cuda.set_device(LOCAL_RANK).
// Without LOCAL_RANK (one host, `moonring launch`), the global rank stands in.

export interface LocalRank {
  localRank: number;
  localWorldSize: number | null;
  /** Where localRank came from, for messages. */
  source: "LOCAL_RANK" | "rank";
}

function envIndex(env: Record<string, string | undefined>, name: string): number | null {
  const v = env[name];
  if (v === undefined || v.trim() === "") return null;
  if (!/^\d+$/.test(v.trim())) throw new Error(`${name}=${JSON.stringify(v)} is not a non-negative integer`);
  return Number(v.trim());
}

/** Reads LOCAL_RANK / LOCAL_WORLD_SIZE; throws on malformed or inconsistent values. */
export function localRankOf(rank: number, env: Record<string, string | undefined> = process.env): LocalRank {
  const localRank = envIndex(env, "LOCAL_RANK");
  const localWorldSize = envIndex(env, "LOCAL_WORLD_SIZE");
  if (localWorldSize !== null && localWorldSize < 1) throw new Error("LOCAL_WORLD_SIZE must be at least 1");
  if (localRank === null) return { localRank: rank, localWorldSize, source: "rank" };
  if (localWorldSize !== null && localRank >= localWorldSize) {
    throw new Error(`LOCAL_RANK=${localRank} is not below LOCAL_WORLD_SIZE=${localWorldSize}`);
  }
  return { localRank, localWorldSize, source: "LOCAL_RANK" };
}

/**
 * The CUDA ordinal for a rank that sees `deviceCount` devices: LOCAL_RANK when it names one;
 * with more local ranks than devices, ranks share them round-robin (LOCAL_RANK mod count).
 */
export function cudaDeviceFor(local: LocalRank, deviceCount: number): number {
  if (deviceCount < 1) return 0;
  return local.localRank % deviceCount;
}
