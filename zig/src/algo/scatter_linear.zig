//! Linear scatter, any root: the root streams block j to rank j with a bounded window of
//! sends, then copies its own block (last, as `recv` may alias `send`). No scratch.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.kind == .scatter);
    std.debug.assert(desc.root < comm.size);
    const n = comm.size;
    const es: u64 = desc.elementBytes();
    const block_bytes = desc.count * es;
    const recv = common.bytesPtrMut(desc.recv, block_bytes);
    if (comm.rank != desc.root) {
        if (block_bytes == 0) return;
        return common.recvBytes(comm, tuning, es, desc.root, recv);
    }
    const send = common.bytesPtr(desc.send, block_bytes * n);
    if (block_bytes > 0) {
        const slice = tuning.sliceBytes(es);
        var sends = common.Inflight.init(comm);
        errdefer sends.drain();
        for (0..n) |p| {
            if (p == desc.root) continue;
            const src = send[p * block_bytes ..][0..block_bytes];
            for (0..common.sliceCount(block_bytes, slice)) |j| {
                try sends.isend(@intCast(p), common.sliceOf(src, slice, j));
                if (sends.len() >= 2 * tuning.window) try sends.waitOldest();
            }
        }
        try sends.waitAll();
    }
    common.move(recv, send[desc.root * block_bytes ..][0..block_bytes]);
}
