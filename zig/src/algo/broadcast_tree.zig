//! Binomial-tree broadcast for small messages, any root: a rank receives the whole message
//! from its parent (virtual rank with the lowest set bit cleared), then sends it on to its
//! children, largest subtree first. log2(n) rounds. No scratch.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.kind == .broadcast);
    std.debug.assert(desc.root < comm.size);
    const n = comm.size;
    const es: u64 = desc.elementBytes();
    const bytes = desc.count * es;
    const recv = common.bytesPtrMut(desc.recv, bytes);
    const vr = common.virtualRank(comm.rank, desc.root, n);
    if (vr == 0) common.move(recv, common.bytesPtr(desc.send, bytes));
    if (n == 1 or bytes == 0) return;

    var mask: u32 = 1;
    while (mask < n) : (mask <<= 1) {
        if (vr & mask != 0) {
            try common.recvBytes(comm, tuning, es, common.realRank(vr - mask, desc.root, n), recv);
            break;
        }
    }
    // mask is vr's lowest set bit (n for the root); children are vr + smaller powers of two.
    mask >>= 1;
    while (mask > 0) : (mask >>= 1) {
        if (vr + mask < n) try common.sendBytes(comm, tuning, es, common.realRank(vr + mask, desc.root, n), recv);
    }
}
