// Membership views as deltas (control/view-delta.ts): the coordinator sends the records that
// changed since its last push; a rank on that base applies them and ends with exactly the
// coordinator's view; a rank on another epoch is told to fetch the full view.
import { expect, test } from "bun:test";
import { Membership, type RankRecord } from "../../src/control/membership";
import { applyViewDelta, ViewDeltas, type ViewDelta } from "../../src/control/view-delta";

function record(rank: number): RankRecord {
  return { rank, url: `http://10.0.0.${rank}:29500`, dataHost: `10.0.0.${rank}`, dataPort: 30000 + rank, hostId: String(rank), pid: 100 + rank, instance: `i${rank}`, state: "healthy", active: true };
}

function world(n: number): Membership {
  const m = new Membership(n);
  for (let r = 0; r < n; r++) m.upsert(record(r));
  m.setEpoch(1);
  return m;
}

test("a rank on the base epoch ends with the coordinator's view; the delta holds only what changed", () => {
  const coordinator = world(1024);
  const rank = new Membership(1024);
  rank.applyView(coordinator.view());
  const deltas = new ViewDeltas();
  const first = deltas.next(coordinator.view());
  expect("view" in first).toBe(true); // nothing pushed before: the full view
  coordinator.update([{ rank: 700, state: "failed", active: false, reason: "no heartbeat" }]);
  const msg = deltas.next(coordinator.view());
  expect("delta" in msg).toBe(true);
  const delta = (msg as { delta: ViewDelta }).delta;
  expect(delta.base).toBe(1);
  expect(delta.ranks.map((r) => r.rank)).toEqual([700]);
  expect(JSON.stringify(delta).length).toBeLessThan(600);
  expect(applyViewDelta(rank, JSON.parse(JSON.stringify(delta)))).toBe(true);
  expect(rank.view()).toEqual(coordinator.view());
  expect(rank.isActive(700)).toBe(false);
});

test("a joiner's record (upserted before the epoch) and a defined group travel in the delta", () => {
  const coordinator = new Membership(8, 4);
  for (let r = 0; r < 4; r++) coordinator.upsert(record(r));
  coordinator.setEpoch(1);
  const rank = new Membership(8, 4);
  rank.applyView(coordinator.view());
  const deltas = new ViewDeltas();
  deltas.next(coordinator.view());
  coordinator.upsert({ ...record(5), state: "awaiting", active: false });
  coordinator.defineGroup("pair", [0, 5]);
  coordinator.update([]);
  const { delta } = deltas.next(coordinator.view()) as { delta: ViewDelta };
  expect(delta.ranks.map((r) => r.rank)).toEqual([5]);
  expect(applyViewDelta(rank, delta)).toBe(true);
  expect(rank.view()).toEqual(coordinator.view());
  expect(rank.groupDef("pair")).toEqual([0, 5]);
});

test("a rank on another epoch can't apply a delta (it fetches the full view); a stale one is ignored", () => {
  const coordinator = world(4);
  const deltas = new ViewDeltas();
  deltas.next(coordinator.view());
  coordinator.update([{ rank: 3, state: "left", active: false }]);
  const { delta: d2 } = deltas.next(coordinator.view()) as { delta: ViewDelta };
  coordinator.update([{ rank: 2, state: "failed", active: false }]);
  const { delta: d3 } = deltas.next(coordinator.view()) as { delta: ViewDelta };
  const behind = world(4); // at epoch 1, missed d2
  expect(applyViewDelta(behind, d3)).toBe(false);
  expect(behind.isActive(2)).toBe(true);
  const ahead = new Membership(4);
  ahead.applyView(coordinator.view()); // already at epoch 3
  expect(applyViewDelta(ahead, d2)).toBe(true);
  expect(ahead.epoch).toBe(3);
  expect(ahead.isActive(2)).toBe(false);
});
