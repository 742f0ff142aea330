//! Pipelined chain reduce for large messages, any root. Virtual ranks (relative to the root)
//! form a chain n-1 -> n-2 -> ... -> 0 (the root); every slice flows down the chain, each rank
//! folding in its own contribution (`incoming op mine`; the root: `mine op incoming`), so
//! every link carries the message once and slices overlap along the chain.
//! Scratch: tuning.depth + 1 slices on inner ranks, tuning.depth slices on the root.
const std = @import("std");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .reduce);
    std.debug.assert(desc.root < comm.size);
    const n = comm.size;
    const es: u64 = desc.elementBytes();
    const bytes = desc.count * es;
    const send = common.bytesPtr(desc.send, bytes);
    const vr = common.virtualRank(comm.rank, desc.root, n);

    if (vr == 0) {
        const recv = common.bytesPtrMut(desc.recv, bytes);
        common.move(recv, send);
        if (n == 1 or bytes == 0) return;
        const tmp = try scratch.alloc(u8, @intCast(common.reduceTmpBytes(tuning, es, bytes)));
        defer scratch.free(tmp);
        const from = common.realRank(1, desc.root, n);
        try common.exchange(comm, tuning, es, null, &.{}, from, recv, .{ .reduce = .{
            .dtype = desc.dtype,
            .redop = desc.redop,
            .tmp = tmp,
        } });
        if (desc.redop == .avg) reduce.finalizeAvg(desc.dtype, recv, n);
        return;
    }
    if (bytes == 0) return;
    const to = common.realRank(vr - 1, desc.root, n);
    if (vr == n - 1) return common.sendBytes(comm, tuning, es, to, send);

    // Inner rank: receive slice j into a slot, fold in our slice j, pass the slot on.
    const from = common.realRank(vr + 1, desc.root, n);
    const slice = tuning.sliceBytes(es);
    const slot_bytes = @min(slice, bytes);
    const slots: u64 = tuning.depth + 1;
    const total = common.sliceCount(bytes, slice);
    const tmp = try scratch.alloc(u8, @intCast(slots * slot_bytes));
    defer scratch.free(tmp);
    var sends = common.Inflight.init(comm);
    var recvs = common.Inflight.init(comm);
    errdefer {
        recvs.drain();
        sends.drain();
    }
    var recvs_posted: u64 = 0;
    while (recvs_posted < @min(total, slots - 1)) : (recvs_posted += 1) {
        try recvs.irecv(from, slotOf(tmp, slot_bytes, slots, recvs_posted, common.sliceOf(send, slice, recvs_posted).len));
    }
    for (0..total) |j| {
        const mine = common.sliceOf(send, slice, j);
        const slot = slotOf(tmp, slot_bytes, slots, j, mine.len);
        try recvs.waitOldest();
        reduce.reduceInto(desc.dtype, desc.redop, slot, mine);
        try sends.isend(to, slot);
        // Slice j + slots - 1 reuses the slot of slice j - 1: wait until that has been sent.
        if (sends.len() > 1) try sends.waitOldest();
        if (recvs_posted < total) {
            try recvs.irecv(from, slotOf(tmp, slot_bytes, slots, recvs_posted, common.sliceOf(send, slice, recvs_posted).len));
            recvs_posted += 1;
        }
    }
    std.debug.assert(recvs.len() == 0 and recvs_posted == total);
    try sends.waitAll();
}

fn slotOf(tmp: []u8, slot_bytes: u64, slots: u64, index: u64, len: usize) []u8 {
    return tmp[(index % slots) * slot_bytes ..][0..len];
}
