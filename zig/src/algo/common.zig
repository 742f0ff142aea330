//! Shared pieces of the collective algorithms: tuning constants, block partitions, bounded
//! request tracking, and the pipelined exchange every ring / pairwise step is built from.
const std = @import("std");
const builtin = @import("builtin");
const transport = @import("../transport/transport.zig");
const op = @import("../op.zig");
const reduce = @import("../reduce.zig");

pub const Comm = transport.Comm;
pub const Error = transport.Error;
pub const Request = transport.Request;
pub const OpDesc = op.OpDesc;
pub const DType = op.DType;
pub const RedOp = op.RedOp;
pub const world_size_max = op.world_size_max;

/// Sizes that pick algorithms and pipeline depths. Every rank of an op must use the same
/// tuning: it decides how messages are sliced, and both ends of a link slice alike.
pub const Tuning = struct {
    /// The largest single message; longer transfers are pipelined in slices of this (rounded
    /// down to whole elements), so reducing one slice overlaps the transfer of the next.
    slice_bytes: u64 = slice_bytes_default,
    /// Messages (bytes of one rank's input) below this use latency-bound algorithms:
    /// recursive doubling allreduce, binomial reduce and broadcast.
    small_bytes: u64 = small_bytes_default,
    /// Sends (and copy-mode receives) in flight per pipelined transfer.
    window: u32 = 8,
    /// Receive slices buffered ahead in reduce mode (scratch = depth * slice).
    depth: u32 = 2,
    /// reduce_scatter works through its blocks in segments of this many bytes per block.
    segment_bytes: u64 = 2 * slice_bytes_default,

    pub fn sliceBytes(t: Tuning, element_bytes: u64) u64 {
        return @max(1, t.slice_bytes / element_bytes) * element_bytes;
    }

    pub fn segmentBytes(t: Tuning, element_bytes: u64) u64 {
        return @max(1, t.segment_bytes / element_bytes) * element_bytes;
    }

    pub fn assertValid(t: Tuning) void {
        std.debug.assert(t.slice_bytes >= 1);
        std.debug.assert(t.window >= 1 and 2 * t.window <= transport.requests_in_flight_max);
        std.debug.assert(t.window + t.depth <= transport.requests_in_flight_max);
        std.debug.assert(t.depth >= 2);
        std.debug.assert(t.segment_bytes >= 1);
    }
};

pub const slice_bytes_default = 1 << 20;
/// 128 KiB: at 2 ranks one recursive-doubling exchange of 64 KiB beats the ring's two hand-off
/// rounds (bench/NOTES.md E9); at >= 256 KiB the ring wins again.
pub const small_bytes_default = 128 << 10;

comptime {
    const t: Tuning = .{};
    std.debug.assert(t.window + t.depth <= transport.requests_in_flight_max);
    std.debug.assert(2 * t.window <= transport.requests_in_flight_max);
    std.debug.assert(slice_bytes_default % 8 == 0); // whole elements of every dtype
}

/// Block `index` of `count` elements split into `parts` near-equal blocks (the first
/// `count % parts` blocks are one longer). Element units.
pub const Block = struct { start: u64, len: u64 };

fn applyReduce(dtype: u32, redop: u32, dst: []u8, a: []const u8, b: []const u8) void {
    reduce.reduceTo(@enumFromInt(dtype), @enumFromInt(redop), dst, a, b);
}

pub fn block(count: u64, parts: u32, index: u32) Block {
    std.debug.assert(parts > 0 and index < parts);
    const base = count / parts;
    const rem = count % parts;
    const start = index * base + @min(index, rem);
    return .{ .start = start, .len = base + @intFromBool(index < rem) };
}

test block {
    var total: u64 = 0;
    for (0..5) |i| {
        const b = block(7, 5, @intCast(i));
        try std.testing.expectEqual(total, b.start);
        total += b.len;
    }
    try std.testing.expectEqual(@as(u64, 7), total);
    try std.testing.expectEqual(@as(u64, 0), block(3, 5, 4).len);
}

pub fn modAdd(a: u32, b: u32, n: u32) u32 {
    return @intCast((@as(u64, a) + b) % n);
}

pub fn modSub(a: u32, b: u32, n: u32) u32 {
    return @intCast((@as(u64, a) + n - (b % n)) % n);
}

/// Copies `src` into `dst` (same length), correct for overlapping ranges; a no-op when they
/// are the same range.
pub fn move(dst: []u8, src: []const u8) void {
    std.debug.assert(dst.len == src.len);
    if (dst.ptr == src.ptr or dst.len == 0) return;
    // Disjoint: libc's memcpy (non-temporal stores past its threshold, no read-for-ownership
    // of the destination) instead of an inlined vector loop (NOTES E29).
    if (!overlaps(dst, src)) return @memcpy(dst, src);
    if (@intFromPtr(dst.ptr) < @intFromPtr(src.ptr)) {
        std.mem.copyForwards(u8, dst, src);
    } else {
        std.mem.copyBackwards(u8, dst, src);
    }
}

/// dst = src (disjoint) with non-temporal stores where the CPU has them (x86-64 SSE2
/// movntdq): the destination lines are not read for ownership first nor kept in this cache,
/// for data the caller will not touch again soon (the peer's copy of a reduced block,
/// NOTES E32). Ends with a store fence, so a release store after it orders after the data.
pub fn copyNonTemporal(dst: []u8, src: []const u8) void {
    std.debug.assert(dst.len == src.len and !overlaps(dst, src));
    if (comptime builtin.cpu.arch != .x86_64) return @memcpy(dst, src);
    if (dst.len < nt_bytes_min) return @memcpy(dst, src);
    const head: usize = (16 - @intFromPtr(dst.ptr) % 16) % 16;
    @memcpy(dst[0..head], src[0..head]);
    const body = (dst.len - head) / 64 * 64;
    var i: usize = head;
    while (i < head + body) : (i += 64) {
        const d = dst.ptr + i;
        const s_ = src.ptr + i;
        asm volatile (
            \\movdqu (%[s]), %%xmm0
            \\movdqu 16(%[s]), %%xmm1
            \\movdqu 32(%[s]), %%xmm2
            \\movdqu 48(%[s]), %%xmm3
            \\movntdq %%xmm0, (%[d])
            \\movntdq %%xmm1, 16(%[d])
            \\movntdq %%xmm2, 32(%[d])
            \\movntdq %%xmm3, 48(%[d])
            :
            : [s] "r" (s_),
              [d] "r" (d),
            : "xmm0", "xmm1", "xmm2", "xmm3", "memory"
        );
    }
    @memcpy(dst[head + body ..], src[head + body ..]);
    asm volatile ("sfence" ::: "memory");
}

/// Below this a non-temporal copy is not worth its fence.
const nt_bytes_min = 4096;

pub fn overlaps(a: []const u8, b: []const u8) bool {
    if (a.len == 0 or b.len == 0) return false;
    const a0 = @intFromPtr(a.ptr);
    const b0 = @intFromPtr(b.ptr);
    return a0 < b0 + b.len and b0 < a0 + a.len;
}

/// Requests of one transfer, oldest first, bounded. On an error path call drain() so no
/// request outlives the buffers it points into.
pub const Inflight = struct {
    comm: Comm,
    requests: std.BoundedArray(Request, transport.requests_in_flight_max) = .{},

    pub fn init(comm: Comm) Inflight {
        return .{ .comm = comm };
    }

    pub fn isend(self: *Inflight, peer: u32, bytes: []const u8) Error!void {
        std.debug.assert(self.requests.len < self.requests.capacity());
        self.requests.appendAssumeCapacity(try self.comm.isend(peer, bytes));
    }

    pub fn irecv(self: *Inflight, peer: u32, bytes: []u8) Error!void {
        std.debug.assert(self.requests.len < self.requests.capacity());
        self.requests.appendAssumeCapacity(try self.comm.irecv(peer, bytes));
    }

    pub fn len(self: *const Inflight) usize {
        return self.requests.len;
    }

    pub fn waitOldest(self: *Inflight) Error!void {
        std.debug.assert(self.requests.len > 0);
        const r = self.requests.orderedRemove(0);
        try self.comm.wait(r);
    }

    /// Waits for every request; returns the first error after all have finished.
    pub fn waitAll(self: *Inflight) Error!void {
        var first: Error!void = {};
        while (self.requests.len > 0) {
            const result = self.waitOldest();
            if (first) |_| first = result else |_| {}
        }
        return first;
    }

    /// Waits for every request, ignoring results (error paths).
    pub fn drain(self: *Inflight) void {
        self.waitAll() catch {};
    }
};

pub fn sliceCount(bytes: u64, slice_bytes: u64) u64 {
    return std.math.divCeil(u64, bytes, slice_bytes) catch unreachable;
}

pub fn sliceOf(bytes: anytype, slice_bytes: u64, index: u64) @TypeOf(bytes) {
    const start = index * slice_bytes;
    std.debug.assert(start < bytes.len);
    return bytes[start..@min(bytes.len, start + slice_bytes)];
}

/// What an exchange does with what it receives.
pub const Combine = union(enum) {
    /// Received bytes land in `into` directly.
    copy,
    /// into = into op received, slice by slice, received slices staged in `tmp`
    /// (tuning.depth slots of one slice).
    reduce: struct { dtype: DType, redop: RedOp, tmp: []u8, mine: ?[]const u8 = null },
};

/// One pipelined step: sends `out` to `to` while receiving `into.len` bytes from `from`, both
/// in slices (either side may be absent). Works under rendezvous delivery: at slice j every
/// rank first posts its receives and its send j, then waits, so a ring of exchanges never
/// deadlocks. `out` must not overlap `into`.
pub fn exchange(comm: Comm, tuning: Tuning, element_bytes: u64, to: ?u32, out: []const u8, from: ?u32, into: []u8, combine: Combine) Error!void {
    std.debug.assert(!overlaps(out, into));
    std.debug.assert(out.len % element_bytes == 0 and into.len % element_bytes == 0);
    if (to == null) std.debug.assert(out.len == 0);
    if (from == null) std.debug.assert(into.len == 0);
    const slice = tuning.sliceBytes(element_bytes);
    const sends_total = sliceCount(out.len, slice);
    const recvs_total = sliceCount(into.len, slice);
    const recv_ahead: u64 = switch (combine) {
        .copy => tuning.window,
        .reduce => |r| blk: {
            std.debug.assert(recvs_total == 0 or r.tmp.len >= tuning.depth * @min(slice, into.len));
            break :blk tuning.depth;
        },
    };
    const slot_bytes = @min(slice, into.len);
    // with `mine` given and a transport that reduces as chunks land, receive
    // straight into `into` (no tmp, no reduce pass here).
    const on_receive = switch (combine) {
        .reduce => |r| r.mine != null and comm.canReduceOnReceive(),
        .copy => false,
    };
    const recv_window: u64 = if (on_receive) tuning.window else recv_ahead;

    var sends = Inflight.init(comm);
    var recvs = Inflight.init(comm);
    errdefer {
        recvs.drain();
        sends.drain();
    }
    var recvs_posted: u64 = 0;
    var j: u64 = 0;
    while (j < @max(sends_total, recvs_total)) : (j += 1) {
        while (recvs_posted < recvs_total and recvs_posted < j + recv_window) : (recvs_posted += 1) {
            try postExchangeRecv(comm, tuning, &recvs, from.?, into, slice, slot_bytes, combine, on_receive, recvs_posted);
        }
        if (j < sends_total) {
            try sends.isend(to.?, sliceOf(out, slice, j));
            if (sends.len() >= tuning.window) try sends.waitOldest();
        }
        if (j < recvs_total) {
            try recvs.waitOldest();
            if (on_receive) continue;
            reduceExchangeSlot(tuning, into, slice, slot_bytes, combine, j);
        }
    }
    std.debug.assert(recvs.len() == 0);
    try sends.waitAll();
}

/// Posts receive `k` of an exchange: reduced on receive into its slice of `into`, else into
/// that slice (copy) or its tmp slot (reduce).
fn postExchangeRecv(comm: Comm, tuning: Tuning, recvs: *Inflight, from: u32, into: []u8, slice: u64, slot_bytes: u64, combine: Combine, on_receive: bool, k: u64) Error!void {
    const piece = sliceOf(into, slice, k);
    if (on_receive) {
        const r = combine.reduce;
        const spec = transport.ReduceSpec{ .mine = sliceOf(r.mine.?, slice, k), .dtype = @intFromEnum(r.dtype), .redop = @intFromEnum(r.redop), .apply = applyReduce };
        std.debug.assert(recvs.requests.len < recvs.requests.capacity());
        recvs.requests.appendAssumeCapacity(try comm.irecvReduce(from, piece, spec));
        return;
    }
    switch (combine) {
        .copy => try recvs.irecv(from, piece),
        .reduce => |r| {
            const slot = r.tmp[(k % tuning.depth) * slot_bytes ..][0..piece.len];
            try recvs.irecv(from, slot);
        },
    }
}

/// Receive `j` of an exchange has landed: in reduce mode, into[j] = (mine[j] if given) op its tmp slot.
fn reduceExchangeSlot(tuning: Tuning, into: []u8, slice: u64, slot_bytes: u64, combine: Combine, j: u64) void {
    switch (combine) {
        .copy => {},
        .reduce => |r| {
            const piece = sliceOf(into, slice, j);
            const slot = r.tmp[(j % tuning.depth) * slot_bytes ..][0..piece.len];
            if (r.mine) |m| {
                const src = sliceOf(m, slice, j);
                if (src.ptr != piece.ptr) @memcpy(piece, src);
            }
            reduce.reduceInto(r.dtype, r.redop, piece, slot);
        },
    }
}

/// Scratch for an exchange in reduce mode receiving up to `into_bytes_max` bytes.
pub fn reduceTmpBytes(tuning: Tuning, element_bytes: u64, into_bytes_max: u64) u64 {
    return tuning.depth * @min(tuning.sliceBytes(element_bytes), into_bytes_max);
}

pub fn sendBytes(comm: Comm, tuning: Tuning, element_bytes: u64, to: u32, bytes: []const u8) Error!void {
    return exchange(comm, tuning, element_bytes, to, bytes, null, &.{}, .copy);
}

pub fn recvBytes(comm: Comm, tuning: Tuning, element_bytes: u64, from: u32, bytes: []u8) Error!void {
    return exchange(comm, tuning, element_bytes, null, &.{}, from, bytes, .copy);
}

/// Group rank relative to `root` (root is 0) and back.
pub fn virtualRank(rank: u32, root: u32, n: u32) u32 {
    return modSub(rank, root, n);
}

pub fn realRank(virtual: u32, root: u32, n: u32) u32 {
    return modAdd(virtual, root, n);
}

pub fn bytesPtr(ptr: [*]const u8, len: u64) []const u8 {
    return ptr[0..@intCast(len)];
}

pub fn bytesPtrMut(ptr: [*]u8, len: u64) []u8 {
    return ptr[0..@intCast(len)];
}
