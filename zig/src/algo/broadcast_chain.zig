//! Pipelined chain broadcast for large messages, any root: virtual ranks (relative to the root)
//! form a chain 0 -> 1 -> ... -> n-1 and each slice is forwarded as soon as it arrives, so the
//! message crosses every link once and slices overlap along the chain. Slices are received
//! straight into `recv` and forwarded from there: no scratch.
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
    if (vr == 0) return common.sendBytes(comm, tuning, es, common.realRank(1, desc.root, n), recv);

    const from = common.realRank(vr - 1, desc.root, n);
    const to: ?u32 = if (vr + 1 < n) common.realRank(vr + 1, desc.root, n) else null;
    const slice = tuning.sliceBytes(es);
    const total = common.sliceCount(bytes, slice);
    var sends = common.Inflight.init(comm);
    var recvs = common.Inflight.init(comm);
    errdefer {
        recvs.drain();
        sends.drain();
    }
    var recvs_posted: u64 = 0;
    for (0..total) |j| {
        while (recvs_posted < total and recvs_posted < j + tuning.window) : (recvs_posted += 1) {
            try recvs.irecv(from, common.sliceOf(recv, slice, recvs_posted));
        }
        try recvs.waitOldest();
        if (to) |next| {
            try sends.isend(next, common.sliceOf(recv, slice, j));
            if (sends.len() >= tuning.window) try sends.waitOldest();
        }
    }
    try sends.waitAll();
}
