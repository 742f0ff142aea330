//! Linear gather, any root: every rank streams its block to the root, which receives them
//! straight into their places with a bounded window of receives. The root's link carries
//! (n-1) blocks whatever the algorithm, so this is bandwidth-optimal. No scratch.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.kind == .gather);
    std.debug.assert(desc.root < comm.size);
    const n = comm.size;
    const es: u64 = desc.elementBytes();
    const block_bytes = desc.count * es;
    const send = common.bytesPtr(desc.send, block_bytes);
    if (comm.rank != desc.root) {
        if (block_bytes == 0) return;
        return common.sendBytes(comm, tuning, es, desc.root, send);
    }
    const recv = common.bytesPtrMut(desc.recv, block_bytes * n);
    // Before anything is received: `send` may alias part of `recv` (in place).
    common.move(recv[desc.root * block_bytes ..][0..block_bytes], send);
    if (block_bytes == 0) return;
    const slice = tuning.sliceBytes(es);
    var recvs = common.Inflight.init(comm);
    errdefer recvs.drain();
    for (0..n) |p| {
        if (p == desc.root) continue;
        const dst = recv[p * block_bytes ..][0..block_bytes];
        for (0..common.sliceCount(block_bytes, slice)) |j| {
            try recvs.irecv(@intCast(p), common.sliceOf(dst, slice, j));
            if (recvs.len() >= 2 * tuning.window) try recvs.waitOldest();
        }
    }
    try recvs.waitAll();
}
