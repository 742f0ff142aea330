// Agreement decisions on the control links, compact. A decision names its members, and every
// member gets one: as plain JSON that is world-size numbers in each of world-size messages, so
// the coordinator's cost per collective grew with the square of the world (a 1,024-rank world
// sent and parsed ~5 MB of rank lists per 8-byte allreduce). On the wire the members are runs of
// consecutive ranks ([[0, 1023]] for a whole world) and a gather's shapes, when all the same, go
// once; the coordinator encodes a decision once for all members (hub.ts).
import type { Decision, GoDecision } from "./matcher";

/** A GoDecision as sent: `ranks` as runs, `shapes` as one shape when every member's is the same. */
interface WireGo extends Omit<GoDecision, "ranks" | "shapes"> {
  runs: [number, number][];
  shapes?: number[][];
  sameShape?: number[];
  sameCount?: number;
}

/** Ascending distinct ranks -> [first, last] runs of consecutive ranks. */
export function toRuns(ranks: readonly number[]): [number, number][] {
  const runs: [number, number][] = [];
  for (const r of ranks) {
    const last = runs[runs.length - 1];
    if (last && r === last[1] + 1) last[1] = r;
    else runs.push([r, r]);
  }
  return runs;
}

export function fromRuns(runs: readonly (readonly [number, number])[]): number[] {
  let n = 0;
  for (const [first, last] of runs) n += last - first + 1;
  const ranks = new Array<number>(n);
  let i = 0;
  for (const [first, last] of runs) for (let r = first; r <= last; r++) ranks[i++] = r;
  return ranks;
}

function sameShapes(shapes: number[][]): number[] | null {
  const first = shapes[0];
  if (!first) return null;
  const key = first.join(",");
  for (const s of shapes) if (s.length !== first.length || s.join(",") !== key) return null;
  return first;
}

/** The JSON text of `d` as the control link carries it. */
export function encodeDecision(d: Decision): string {
  if (!d.ok) return JSON.stringify(d);
  const { ranks, shapes, ...rest } = d;
  const wire: WireGo = { ...rest, runs: toRuns(ranks) };
  if (shapes) {
    const same = shapes.length > 1 ? sameShapes(shapes) : null;
    if (same) {
      wire.sameShape = same;
      wire.sameCount = shapes.length;
    } else wire.shapes = shapes;
  }
  return JSON.stringify(wire);
}

/** A decision as received (encoded by encodeDecision, or plain: re-issues carry it plain). */
export function decodeDecision(x: unknown): Decision {
  const w = x as Partial<WireGo> & Decision;
  if (!w.ok || !Array.isArray(w.runs)) return w;
  const { runs, sameShape, sameCount, ...rest } = w;
  const d = { ...rest, ranks: fromRuns(runs) } as GoDecision;
  if (sameShape && sameCount) d.shapes = Array.from({ length: sameCount }, () => sameShape.slice());
  return d;
}
