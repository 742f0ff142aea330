// LOCAL_RANK / LOCAL_WORLD_SIZE (torchrun) choose a rank's GPU; malformed values stop serve with
// a usage error instead of landing ranks on the wrong device.
import { describe, expect, test } from "bun:test";
import { BufferRegistry, type DeviceOps } from "../../src/control/buffers";
import { cudaDeviceFor, localRankOf } from "../../src/util/local-rank";
import { CLI } from "../support/launch-world";

const fakeCuda = (count: number): DeviceOps => ({
  deviceCount: () => count,
  unavailableReason: () => "",
  copyToDevice: () => {},
  copyToHost: () => {},
  ipcHandle: () => new Uint8Array(64),
});

describe("LOCAL_RANK / LOCAL_WORLD_SIZE", () => {
  test("LOCAL_RANK picks the device, not the global rank", () => {
    // rank 5 of a 2-host job, 4 ranks per host: the second host's local rank 1 -> cuda:1
    const local = localRankOf(5, { LOCAL_RANK: "1", LOCAL_WORLD_SIZE: "4" });
    expect(local).toEqual({ localRank: 1, localWorldSize: 4, source: "LOCAL_RANK" });
    expect(cudaDeviceFor(local, 4)).toBe(1);
    // without LOCAL_RANK the global rank stands in (one host)
    expect(cudaDeviceFor(localRankOf(5, {}), 4)).toBe(1);
    expect(cudaDeviceFor(localRankOf(6, {}), 4)).toBe(2);
    expect(cudaDeviceFor(localRankOf(6, { LOCAL_RANK: "0" }), 4)).toBe(0);
    // more local ranks than devices share them round-robin
    expect(cudaDeviceFor(localRankOf(3, { LOCAL_RANK: "3", LOCAL_WORLD_SIZE: "4" }), 2)).toBe(1);
  });

  test("a buffer created with device cuda lands on LOCAL_RANK's device", () => {
    const local = localRankOf(7, { LOCAL_RANK: "2", LOCAL_WORLD_SIZE: "4" });
    const cuda = fakeCuda(4);
    const reg = new BufferRegistry(7, () => { throw new Error("not allocating here"); }, cuda, () => cudaDeviceFor(local, cuda.deviceCount()), "cuda");
    expect(reg.parseDevice(undefined)).toBe(2);
    expect(reg.parseDevice("cuda")).toBe(2);
    expect(reg.parseDevice("cuda:3")).toBe(3);
  });

  test("malformed or inconsistent values are refused", () => {
    expect(() => localRankOf(0, { LOCAL_RANK: "x" })).toThrow("LOCAL_RANK");
    expect(() => localRankOf(0, { LOCAL_RANK: "-1" })).toThrow("LOCAL_RANK");
    expect(() => localRankOf(0, { LOCAL_RANK: "4", LOCAL_WORLD_SIZE: "4" })).toThrow("not below LOCAL_WORLD_SIZE=4");
    expect(() => localRankOf(0, { LOCAL_WORLD_SIZE: "0" })).toThrow("LOCAL_WORLD_SIZE");
  });

  test("serve exits with a usage error naming LOCAL_RANK", () => {
    const r = Bun.spawnSync([process.execPath, CLI, "serve", "--rank", "0", "--world-size", "1", "--port", "39999", "--master", "127.0.0.1:39999"], {
      env: { ...process.env, LOCAL_RANK: "3", LOCAL_WORLD_SIZE: "2", MOONRING_LOG: "error" },
      timeout: 30_000,
    });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr.toString()).toContain("LOCAL_RANK=3 is not below LOCAL_WORLD_SIZE=2");
  });
});
