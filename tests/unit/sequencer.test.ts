import { expect, test } from "bun:test";
import { Sequencer } from "../../src/control/sequencer";

test("sequencer: later tickets wait for every earlier one, in order", async () => {
  const s = new Sequencer();
  const [a, b, c] = [s.take(), s.take(), s.take()];
  const order: string[] = [];
  expect(s.turn(a)).toBeNull();
  const pc = s.turn(c)!.then(() => order.push("c"));
  const pb = s.turn(b)!.then(() => order.push("b"));
  s.finish(a);
  await pb;
  expect(order).toEqual(["b"]);
  s.finish(b);
  await pc;
  expect(order).toEqual(["b", "c"]);
  s.finish(c);
  s.finish(c); // idempotent
  expect(s.turn(s.take())).toBeNull();
});

test("sequencer: finishing out of order releases only when the prefix is done", async () => {
  const s = new Sequencer();
  const t = [s.take(), s.take(), s.take(), s.take()];
  let woke = false;
  void s.turn(t[3]!)!.then(() => (woke = true));
  s.finish(t[2]!);
  s.finish(t[1]!);
  await Promise.resolve();
  expect(woke).toBe(false);
  s.finish(t[0]!);
  await Promise.resolve();
  expect(woke).toBe(true);
});
