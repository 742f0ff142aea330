// The kernels the C ABI does not expose, launched straight from the fatbin (./cuda.ts):
// mr_reduce2_* (dst = a op b), mr_reduceN_* (dst = s0 op s1 op ..., accumulated in the
// accumulation type), mr_scale_* (avg's division) and mr_copy_strided, against the CPU
// reference. Skips without a CUDA device.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Cuda, sources } from "./cuda";
import { openGpu } from "./lib";
import { alloc, apply, dtypes, effectiveOp, fill, get, mismatches, pairs, reduceRef, Rng, scaleRef, set, type DType, type RedOp } from "./reference";

const gpu = openGpu();
const hasGpu = gpu.deviceCount > 0;
const seed = Number(process.env.MOONRING_TEST_SEED ?? Date.now() % 1_000_000);
const device = Number(process.env.MOONRING_TEST_DEVICE ?? 0);
const count = (1 << 15) + 7;
const slotBytes = count * 8 + 256;

describe.skipIf(!hasGpu)("kernels from the fatbin", () => {
  let cuda: Cuda;
  const bufs: bigint[] = [];
  beforeAll(() => {
    cuda = new Cuda(device);
    for (let i = 0; i < 4; i++) bufs.push(cuda.alloc(slotBytes));
  });
  afterAll(() => {
    for (const b of bufs) cuda.free(b);
  });

  const at = (slot: number, dtype: DType, offset: number) => bufs[slot]! + BigInt(offset * dtype.bytes);
  const fail = (what: string, bad: string[]) => {
    if (bad.length > 0) throw new Error(`${what} (seed ${seed}):\n  ${bad.join("\n  ")}`);
  };

  /** f32 accumulation (what mr_reduceN does for f16 / bf16 / f32), exact for the rest. */
  function reduceManyRef(redop: RedOp, dtype: DType, inputs: any[]): any {
    const op = effectiveOp(redop, dtype);
    const roundAcc = dtype.kind === "float" && dtype.bytes <= 4 ? Math.fround : (x: any) => x;
    const out = alloc(dtype, inputs[0].length) as any;
    for (let i = 0; i < out.length; i++) {
      let acc = get(dtype, inputs[0], i);
      for (let s = 1; s < inputs.length; s++) acc = roundAcc(apply(op, dtype, acc, get(dtype, inputs[s], i)) as number);
      set(dtype, out, i, acc);
    }
    return out;
  }

  for (const { redop, dtype } of pairs()) {
    test(`mr_reduce2_${redop.name}_${dtype.short} and mr_reduceN_${redop.name}_${dtype.short}`, () => {
      const rng = new Rng(seed + 7 * redop.code + 1000 * dtype.code);
      const a = alloc(dtype, count) as any;
      const b = alloc(dtype, count) as any;
      const c = alloc(dtype, count) as any;
      for (const x of [a, b, c]) fill(dtype, x, rng);
      const items = Math.ceil((count * dtype.bytes) / 16);
      // dst = a op b: dst apart (offset 1: scalar head), then in place on b.
      for (const [off, inPlace] of [[0, false], [1, false], [0, true]] as const) {
        cuda.upload(at(0, dtype, off), a);
        cuda.upload(at(1, dtype, off), b);
        const dst = inPlace ? at(1, dtype, off) : at(2, dtype, off);
        cuda.launch(`mr_reduce2_${redop.name}_${dtype.short}`, cuda.grid(items), [{ u64: dst }, { u64: at(0, dtype, off) }, { u64: at(1, dtype, off) }, { u64: BigInt(count) }]);
        const got = alloc(dtype, count) as any;
        cuda.download(got, dst);
        fail(`reduce2 ${redop.name} ${dtype.name} offset ${off}${inPlace ? " in place" : ""}`, mismatches(dtype, got, reduceRef(redop, dtype, a, b), [a, b]));
      }
      // dst = a op b op c, dst == c.
      cuda.upload(at(0, dtype, 0), a);
      cuda.upload(at(1, dtype, 0), b);
      cuda.upload(at(2, dtype, 0), c);
      const srcs = sources([at(0, dtype, 0), at(1, dtype, 0), at(2, dtype, 0)]);
      cuda.launch(`mr_reduceN_${redop.name}_${dtype.short}`, cuda.grid(count), [{ u64: at(2, dtype, 0) }, { bytes: srcs }, { u64: BigInt(count) }]);
      const got = alloc(dtype, count) as any;
      cuda.download(got, at(2, dtype, 0));
      fail(`reduceN ${redop.name} ${dtype.name}`, mismatches(dtype, got, reduceManyRef(redop, dtype, [a, b, c]), [a, b, c]));
    });
  }

  for (const dtype of dtypes.filter((d) => d.kind === "float")) {
    test(`mr_scale_${dtype.short}`, () => {
      const rng = new Rng(seed + dtype.code);
      for (const [n, off] of [[3, 0], [8, 1], [5, 3]] as const) {
        const a = alloc(dtype, count) as any;
        fill(dtype, a, rng);
        cuda.upload(at(0, dtype, off), a);
        cuda.launch(`mr_scale_${dtype.short}`, cuda.grid(Math.ceil((count * dtype.bytes) / 16)), [{ u64: at(0, dtype, off) }, { u64: BigInt(count) }, { f64: n }]);
        const got = alloc(dtype, count) as any;
        cuda.download(got, at(0, dtype, off));
        fail(`scale ${dtype.name} / ${n} offset ${off}`, mismatches(dtype, got, scaleRef(dtype, a, n), [a]));
      }
    });
  }

  test("mr_copy_strided: pack / unpack at every alignment, many blocks", () => {
    const rng = new Rng(seed);
    // [block_bytes, blocks, dst_stride, src_stride, dst_offset, src_offset]
    const cases: [number, number, number, number, number, number][] = [
      [4096, 8, 4096, 8192, 0, 0], // 16-byte words, pack
      [4096, 8, 8192, 4096, 0, 0], // unpack
      [24, 100, 24, 40, 8, 16], // 8-byte words
      [12, 300, 20, 12, 4, 0], // 4-byte words
      [6, 500, 6, 10, 2, 2], // 2-byte words
      [7, 500, 9, 7, 1, 3], // bytes
      [16, 70_000, 16, 32, 0, 0], // more blocks than gridDim.y (65535)
      [1 << 20, 1, 1 << 20, 1 << 20, 0, 16], // one big block
    ];
    for (const [blockBytes, blocks, dstStride, srcStride, dstOff, srcOff] of cases) {
      const srcSpan = srcOff + (blocks - 1) * srcStride + blockBytes;
      const dstSpan = dstOff + (blocks - 1) * dstStride + blockBytes;
      const src = new Uint8Array(srcSpan);
      rng.bytes(src);
      const dst0 = new Uint8Array(dstSpan);
      rng.bytes(dst0);
      const srcD = cuda.alloc(srcSpan);
      const dstD = cuda.alloc(dstSpan);
      try {
        cuda.upload(srcD, src);
        cuda.upload(dstD, dst0);
        const gridY = Math.min(blocks, 65535);
        const gridX = Math.max(1, Math.floor(cuda.grid(Math.ceil(blockBytes / 16) * gridY) / gridY));
        cuda.launch(
          "mr_copy_strided",
          gridX,
          [{ u64: dstD + BigInt(dstOff) }, { u64: srcD + BigInt(srcOff) }, { u64: BigInt(blockBytes) }, { u64: BigInt(blocks) }, { u64: BigInt(dstStride) }, { u64: BigInt(srcStride) }],
          gridY,
        );
        const expected = dst0.slice();
        for (let k = 0; k < blocks; k++) {
          expected.set(src.subarray(srcOff + k * srcStride, srcOff + k * srcStride + blockBytes), dstOff + k * dstStride);
        }
        const got = new Uint8Array(dstSpan);
        cuda.download(got, dstD);
        const first = got.findIndex((v, i) => v !== expected[i]);
        expect({ case: [blockBytes, blocks, dstStride, srcStride, dstOff, srcOff], firstMismatch: first }).toEqual({
          case: [blockBytes, blocks, dstStride, srcStride, dstOff, srcOff],
          firstMismatch: -1,
        });
      } finally {
        cuda.free(srcD);
        cuda.free(dstD);
      }
    }
  });
});
