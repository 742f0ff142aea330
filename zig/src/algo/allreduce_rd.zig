//! Recursive-doubling allreduce for small messages: log2(n) exchanges of the whole buffer.
//! Non-power-of-two worlds fold first: with p2 the largest power of two <= n and
//! rem = n - p2, each even rank r < 2*rem hands its data to r+1 and gets the result back at
//! the end. Every combination is `lower ranks op higher ranks` and both partners of an
//! exchange hold identical inputs, so all ranks compute the same operations in the same order
//! and end with identical bytes.
//! Scratch: one buffer of the message size (used below tuning.small_bytes).
const std = @import("std");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .allreduce);
    const n = comm.size;
    const r = comm.rank;
    const es: u64 = desc.elementBytes();
    const bytes = desc.count * es;
    const buf = common.bytesPtrMut(desc.recv, bytes);
    common.move(buf, common.bytesPtr(desc.send, bytes));
    if (n == 1 or bytes == 0) return;

    const tmp = try scratch.alloc(u8, @intCast(bytes));
    defer scratch.free(tmp);

    const p2: u32 = std.math.floorPowerOfTwo(u32, n);
    const rem = n - p2;
    // Fold: even ranks below 2*rem give their data to the odd rank above and sit out.
    if (r < 2 * rem) {
        if (r % 2 == 0) {
            try common.sendBytes(comm, tuning, es, r + 1, buf);
            try common.recvBytes(comm, tuning, es, r + 1, buf);
            return;
        }
        try common.recvBytes(comm, tuning, es, r - 1, tmp);
        combine(desc, buf, tmp, .theirs_lower);
    }
    const virtual: u32 = if (r < 2 * rem) r / 2 else r - rem;
    var mask: u32 = 1;
    while (mask < p2) : (mask <<= 1) {
        const partner_virtual = virtual ^ mask;
        const partner = if (partner_virtual < rem) partner_virtual * 2 + 1 else partner_virtual + rem;
        try common.exchange(comm, tuning, es, partner, buf, partner, tmp, .copy);
        combine(desc, buf, tmp, if (partner_virtual < virtual) .theirs_lower else .mine_lower);
    }
    if (desc.redop == .avg) reduce.finalizeAvg(desc.dtype, buf, n);
    if (r < 2 * rem) try common.sendBytes(comm, tuning, es, r - 1, buf);
}

/// mine = lower op higher, whichever of mine / theirs is the lower ranks' data.
fn combine(desc: common.OpDesc, mine: []u8, theirs: []u8, order: enum { mine_lower, theirs_lower }) void {
    switch (order) {
        .mine_lower => reduce.reduceInto(desc.dtype, desc.redop, mine, theirs),
        .theirs_lower => {
            reduce.reduceInto(desc.dtype, desc.redop, theirs, mine);
            @memcpy(mine, theirs);
        },
    }
}
