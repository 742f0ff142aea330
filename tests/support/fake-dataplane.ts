// Test-only DataPlane: moves bytes in-process between the ranks of ONE process (a FakeHub
// shared by several RankServices), computing every collective with a plain TypeScript
// reference. Lets the control plane (HTTP, agreement, codec) be tested without libmoonring.
// The real service always uses src/native/engine.ts.
import { NativeError, type DataPlane, type DataPlaneOptions, type NativeBuffer, type NativeOp } from "../../src/native/types";
import { dtypeInfo, type DTypeName, type RedOpName } from "../../src/ops/table";
import { fromBFloat16Bits, fromFloat16Bits, toBFloat16Bits, toFloat16Bits } from "../../src/tensor/half";

interface Entry {
  rank: number;
  op: NativeOp;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class FakeHub {
  private ops = new Map<string, Map<number, Entry>>();
  /** Every NativeOp submitted (tests inspect op ids, ranks, counts). */
  readonly log: { rank: number; kind: string; opId: bigint; ranks: number[]; count: number }[] = [];
  private planes = new Map<number, FakeDataPlane>();
  nextPort = 40000;

  create(opts: DataPlaneOptions): FakeDataPlane {
    const p = new FakeDataPlane(this, opts.rank, this.nextPort++);
    this.planes.set(opts.rank, p);
    return p;
  }

  /** peerDown(peer) on `rank`'s plane: its ops that include peer fail at once with EPEER. */
  failPending(rank: number, peer: number): void {
    for (const [key, m] of this.ops) {
      const e = m.get(rank);
      if (!e || !e.op.ranks.includes(peer)) continue;
      clearTimeout(e.timer);
      m.delete(rank);
      if (m.size === 0) this.ops.delete(key);
      e.reject(new NativeError(`rank ${rank}: ${e.op.kind} op ${key}: rank ${peer} was marked down`, "EPEER", peer));
    }
  }

  submit(rank: number, op: NativeOp): Promise<void> {
    this.log.push({ rank, kind: op.kind, opId: BigInt(op.opId), ranks: op.ranks, count: op.count });
    const key = op.opId.toString();
    let m = this.ops.get(key);
    if (!m) {
      m = new Map();
      this.ops.set(key, m);
    }
    if (m.has(rank)) return Promise.reject(new NativeError(`rank ${rank}: op ${key} submitted twice`, "EPROTO"));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        m!.delete(rank);
        if (m!.size === 0) this.ops.delete(key);
        reject(new NativeError(`rank ${rank}: ${op.kind} op ${key} timed out after ${op.timeoutMs} ms`, "ETIMEOUT"));
      }, op.timeoutMs);
      m!.set(rank, { rank, op, resolve, reject, timer });
      const parties = op.kind === "send" || op.kind === "recv" ? 2 : op.ranks.length;
      if (m!.size === parties) {
        this.ops.delete(key);
        const entries = [...m!.values()];
        for (const e of entries) clearTimeout(e.timer);
        try {
          execute(entries);
          for (const e of entries) e.resolve();
        } catch (err) {
          for (const e of entries) e.reject(err as Error);
        }
      }
    });
  }
}

export class FakeDataPlane implements DataPlane {
  readonly hostId = 42n;
  readonly peers = new Map<number, { host: string; port: number; hostId: bigint }>();
  readonly down = new Set<number>();
  closed = false;
  allocated = 0;

  constructor(
    private hub: FakeHub,
    readonly rank: number,
    readonly dataPort: number,
  ) {}

  setPeer(rank: number, host: string, port: number, hostId: bigint): void {
    this.peers.set(rank, { host, port, hostId });
    this.down.delete(rank);
  }
  peerDown(rank: number): void {
    this.down.add(rank);
    this.hub.failPending(this.rank, rank);
  }
  alloc(byteLength: number): NativeBuffer {
    const bytes = new Uint8Array(byteLength);
    this.allocated++;
    let released = false;
    return {
      bytes,
      address: 0n,
      byteLength,
      device: -1,
      release: () => {
        if (released) throw new Error("double release");
        released = true;
        this.allocated--;
      },
    };
  }
  run(op: NativeOp): Promise<void> {
    if (this.closed) return Promise.reject(new NativeError("closed", "ECANCELED"));
    const down = op.ranks.find((r) => r !== this.rank && this.down.has(r));
    if (down !== undefined) return Promise.reject(new NativeError(`rank ${this.rank}: rank ${down} was marked down`, "EPEER", down));
    return this.hub.submit(this.rank, op);
  }
  close(): void {
    this.closed = true;
  }
}

// ---- reference collectives ----

function toNumbers(dtype: DTypeName, b: Uint8Array): (number | bigint)[] {
  const n = b.byteLength / dtypeInfo(dtype).bytes;
  const buf = b.slice().buffer;
  switch (dtype) {
    case "float32":
      return Array.from(new Float32Array(buf, 0, n));
    case "float64":
      return Array.from(new Float64Array(buf, 0, n));
    case "float16":
      return Array.from(new Uint16Array(buf, 0, n), fromFloat16Bits);
    case "bfloat16":
      return Array.from(new Uint16Array(buf, 0, n), fromBFloat16Bits);
    case "int8":
      return Array.from(new Int8Array(buf, 0, n));
    case "uint8":
    case "bool":
      return Array.from(new Uint8Array(buf, 0, n));
    case "int16":
      return Array.from(new Int16Array(buf, 0, n));
    case "int32":
      return Array.from(new Int32Array(buf, 0, n));
    case "int64":
      return Array.from(new BigInt64Array(buf, 0, n));
  }
}

function fromNumbers(dtype: DTypeName, vals: (number | bigint)[], out: Uint8Array): void {
  const n = vals.length;
  const ab = new ArrayBuffer(n * dtypeInfo(dtype).bytes);
  switch (dtype) {
    case "float32":
      new Float32Array(ab).set(vals as number[]);
      break;
    case "float64":
      new Float64Array(ab).set(vals as number[]);
      break;
    case "float16":
      new Uint16Array(ab).set((vals as number[]).map(toFloat16Bits));
      break;
    case "bfloat16":
      new Uint16Array(ab).set((vals as number[]).map(toBFloat16Bits));
      break;
    case "int8":
      new Int8Array(ab).set(vals as number[]);
      break;
    case "uint8":
    case "bool":
      new Uint8Array(ab).set(vals as number[]);
      break;
    case "int16":
      new Int16Array(ab).set(vals as number[]);
      break;
    case "int32":
      new Int32Array(ab).set(vals as number[]);
      break;
    case "int64":
      new BigInt64Array(ab).set(vals as bigint[]);
      break;
  }
  out.set(new Uint8Array(ab));
}

function round(dtype: DTypeName, v: number): number {
  if (dtype === "float32" || dtype === "float16" || dtype === "bfloat16") return Math.fround(v);
  return v;
}

function reduce(dtype: DTypeName, redop: RedOpName, inputs: Uint8Array[]): Uint8Array {
  const kind = dtypeInfo(dtype).kind;
  let op = redop;
  if (kind === "bool") op = ({ sum: "bor", prod: "band", min: "band", max: "bor" } as Record<string, RedOpName>)[redop] ?? redop;
  const arrays = inputs.map((b) => toNumbers(dtype, b));
  const n = arrays[0]!.length;
  const out: (number | bigint)[] = new Array(n);
  for (let i = 0; i < n; i++) {
    let acc = arrays[0]![i]!;
    for (let k = 1; k < arrays.length; k++) {
      const v = arrays[k]![i]!;
      if (typeof acc === "bigint") {
        const b = v as bigint;
        acc = BigInt.asIntN(64, { sum: acc + b, prod: acc * b, min: acc < b ? acc : b, max: acc > b ? acc : b, band: acc & b, bor: acc | b, bxor: acc ^ b, avg: 0n }[op]);
      } else {
        const a = acc as number;
        const b = v as number;
        let r: number;
        switch (op) {
          case "sum":
          case "avg":
            r = a + b;
            break;
          case "prod":
            r = a * b;
            break;
          case "min":
            r = a !== a || b !== b ? NaN : Math.min(a, b);
            break;
          case "max":
            r = a !== a || b !== b ? NaN : Math.max(a, b);
            break;
          case "band":
            r = a & b;
            break;
          case "bor":
            r = a | b;
            break;
          case "bxor":
            r = a ^ b;
            break;
        }
        acc = kind === "float" ? round(dtype === "float64" ? "float64" : "float32", r) : r;
      }
    }
    if (op === "avg") acc = round(dtype === "float64" ? "float64" : "float32", (acc as number) / arrays.length);
    out[i] = acc;
  }
  const res = new Uint8Array(inputs[0]!.byteLength);
  fromNumbers(dtype, out, res);
  return res;
}

function execute(entries: Entry[]): void {
  const byRank = new Map(entries.map((e) => [e.rank, e]));
  const first = entries[0]!.op;
  const isz = dtypeInfo(first.dtype).bytes;
  if (first.kind === "send" || first.kind === "recv") {
    const s = entries.find((e) => e.op.kind === "send");
    const r = entries.find((e) => e.op.kind === "recv");
    if (!s || !r) throw new NativeError(`p2p op ${first.opId}: two ${first.kind}s`, "EPROTO");
    if (s.op.count !== r.op.count || s.op.dtype !== r.op.dtype) throw new NativeError("p2p send/recv disagree on count or dtype", "EPROTO");
    r.op.recv!.bytes.set(s.op.send!.bytes.subarray(0, s.op.count * isz));
    return;
  }
  for (const e of entries) {
    if (e.op.kind !== first.kind || e.op.dtype !== first.dtype || e.op.count !== first.count || e.op.root !== first.root || e.op.redop !== first.redop) {
      throw new NativeError(`op ${first.opId}: ranks disagree (${first.kind}/${first.dtype}/${first.count} vs ${e.op.kind}/${e.op.dtype}/${e.op.count})`, "EPROTO");
    }
  }
  const ranks = first.ranks;
  const n = ranks.length;
  const count = first.count;
  const bytes = count * isz;
  const sendOf = (r: number) => byRank.get(r)!.op.send!.bytes;
  const recvOf = (r: number) => byRank.get(r)!.op.recv!.bytes;
  switch (first.kind) {
    case "allreduce": {
      const red = reduce(first.dtype, first.redop!, ranks.map((r) => sendOf(r).subarray(0, bytes)));
      for (const r of ranks) recvOf(r).set(red);
      return;
    }
    case "reduce": {
      const red = reduce(first.dtype, first.redop!, ranks.map((r) => sendOf(r).subarray(0, bytes)));
      recvOf(first.root!).set(red);
      return;
    }
    case "broadcast": {
      const e = byRank.get(first.root!)!;
      const src = (e.op.send ?? e.op.recv)!.bytes.slice(0, bytes);
      for (const r of ranks) recvOf(r).set(src);
      return;
    }
    case "allgather":
    case "gather": {
      const targets = first.kind === "gather" ? [first.root!] : ranks;
      for (const t of targets) ranks.forEach((r, j) => recvOf(t).set(sendOf(r).subarray(0, bytes), j * bytes));
      return;
    }
    case "scatter": {
      const src = sendOf(first.root!);
      ranks.forEach((r, j) => recvOf(r).set(src.subarray(j * bytes, (j + 1) * bytes)));
      return;
    }
    case "reduce_scatter": {
      ranks.forEach((r, j) => {
        const red = reduce(first.dtype, first.redop!, ranks.map((s) => sendOf(s).subarray(j * bytes, (j + 1) * bytes)));
        recvOf(r).set(red);
      });
      return;
    }
    case "alltoall": {
      const sendOffsets = (r: number) => {
        const c = byRank.get(r)!.op.sendCounts!;
        const offs = [0];
        for (let j = 0; j < n; j++) offs.push(offs[j]! + c[j]! * isz);
        return offs;
      };
      ranks.forEach((dst, j) => {
        const rc = byRank.get(dst)!.op.recvCounts!;
        let off = 0;
        ranks.forEach((src, i) => {
          const so = sendOffsets(src);
          const len = byRank.get(src)!.op.sendCounts![j]! * isz;
          if (len !== rc[i]! * isz) throw new NativeError(`alltoall: rank ${src} sends ${len} bytes to ${dst} which expects ${rc[i]! * isz}`, "EPROTO");
          recvOf(dst).set(sendOf(src).subarray(so[j]!, so[j]! + len), off);
          off += len;
        });
      });
      return;
    }
    case "barrier":
      return;
  }
  throw new NativeError(`fake data plane: unknown kind ${first.kind}`, "EINVAL");
}
