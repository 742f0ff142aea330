//! Point-to-point send / recv: `desc.root` is the peer. Long messages go in slices (both sides
//! slice alike), with a bounded window in flight. No scratch.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.root < comm.size and desc.root != comm.rank);
    const es: u64 = desc.elementBytes();
    const bytes = desc.count * es;
    switch (desc.kind) {
        .send => try common.sendBytes(comm, tuning, es, desc.root, common.bytesPtr(desc.send, bytes)),
        .recv => try common.recvBytes(comm, tuning, es, desc.root, common.bytesPtrMut(desc.recv, bytes)),
        else => unreachable,
    }
}
