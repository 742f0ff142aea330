// A Worker parked in mr_wait (P1, see engine.ts): tells the main thread when completions are
// queued, then sleeps until the main thread has drained them with mr_poll. Never spins.
import { native } from "./ffi";
declare const self: Worker;
self.onmessage = (e: MessageEvent) => {
  const handle = e.data.handle as number;
  const flag = new Int32Array(e.data.sab as SharedArrayBuffer);
  // flag[0]: 1 = main thread told, not yet drained; flag[1]: 1 = stop; flag[2]: 1 = stopped
  while (Atomics.load(flag, 1) === 0) {
    if (native.mr_wait(handle, 50)) {
      Atomics.store(flag, 0, 1);
      postMessage(0);
      Atomics.wait(flag, 0, 1, 1000);
    }
  }
  Atomics.store(flag, 2, 1);
};
