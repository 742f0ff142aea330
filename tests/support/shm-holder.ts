// For tests/multirank/shared-buffers.test.ts:
//   bun tests/support/shm-holder.ts hold     allocates a shared buffer, prints its /dev/shm path,
//                                            idles until killed
//   bun tests/support/shm-holder.ts engine   starts (and closes) an engine: its start sweeps the
//                                            files of dead processes
import { NativeDataPlane } from "../../src/native/engine";

const plane = new NativeDataPlane({ rank: 0, worldSizeMax: 1, clusterId: `shm-holder-${process.pid}`, listenHost: "127.0.0.1" });
if (process.argv[2] === "hold") {
  const buf = plane.allocShared(4096);
  console.log(plane.sharedLocation(buf)!.path);
  setInterval(() => {}, 1 << 30);
} else {
  plane.close();
}
