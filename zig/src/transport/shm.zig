//! Shared-memory ring: one per ordered pair of ranks on a host, in a /dev/shm segment created
//! by the sending rank. Single producer (the sender's op threads, serialized by the link's
//! mutex), single consumer (the receiver's link thread). Each slot holds one frame (header +
//! up to slot_bytes of payload). Indices are atomics; a side that finds the ring empty/full
//! spins briefly, then sleeps on a shared futex, and the other side only makes the wake syscall
//! when a sleeper has announced itself, so a busy ring runs without syscalls.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");

pub const ring_magic: u64 = 0x4d52_5249_4e47_0001; // "MRRING" v1
pub const slot_count_default: u32 = 16;
pub const slot_bytes_default: u32 = 256 * 1024;
pub const slot_bytes_max: u32 = wire.chunk_bytes_max;
pub const slot_count_max: u32 = 1024;
const slot_header_bytes = 64;
const header_bytes = 4096;

comptime {
    std.debug.assert(@sizeOf(wire.FrameHeader) <= slot_header_bytes);
    std.debug.assert(@sizeOf(Header) <= header_bytes);
}

const Header = extern struct {
    magic: u64,
    version: u32,
    slot_count: u32,
    slot_bytes: u32,
    creator_rank: u32,
    host_id: u64,
    segment_bytes: u64,
    pad0: [24]u8 = [_]u8{0} ** 24,
    // Producer-written line.
    head: u32 align(64) = 0,
    consumer_sleeping: u32 = 0,
    pad1: [56]u8 = [_]u8{0} ** 56,
    // Consumer-written line.
    tail: u32 align(64) = 0,
    producer_sleeping: u32 = 0,
    pad2: [56]u8 = [_]u8{0} ** 56,
};

pub fn segmentBytes(slot_count: u32, slot_bytes: u32) u64 {
    return header_bytes + @as(u64, slot_count) * (slot_header_bytes + @as(u64, slot_bytes));
}

pub const Ring = struct {
    segment: sys.Segment,
    header: *Header,
    slot_count: u32,
    slot_bytes: u32,

    /// Initializes a fresh (zeroed) segment as an empty ring.
    pub fn create(segment: sys.Segment, slot_count: u32, slot_bytes: u32, creator_rank: u32, host_id: u64) Ring {
        std.debug.assert(segment.bytes == segmentBytes(slot_count, slot_bytes));
        std.debug.assert(slot_count > 0 and slot_count <= slot_count_max and slot_bytes % 64 == 0);
        const header: *Header = @ptrCast(@alignCast(segment.ptr));
        header.* = .{
            .magic = ring_magic,
            .version = wire.protocol_version,
            .slot_count = slot_count,
            .slot_bytes = slot_bytes,
            .creator_rank = creator_rank,
            .host_id = host_id,
            .segment_bytes = segment.bytes,
        };
        return .{ .segment = segment, .header = header, .slot_count = slot_count, .slot_bytes = slot_bytes };
    }

    /// Checks a segment another rank created before trusting its geometry. `host_id`: the
    /// creator's host id when known (null: any).
    pub fn attach(segment: sys.Segment, creator_rank: u32, host_id: ?u64) error{BadRing}!Ring {
        if (segment.bytes < header_bytes) return error.BadRing;
        const header: *Header = @ptrCast(@alignCast(segment.ptr));
        if (header.magic != ring_magic or header.version != wire.protocol_version) return error.BadRing;
        if (header.creator_rank != creator_rank) return error.BadRing;
        if (host_id) |id| if (header.host_id != id) return error.BadRing;
        const count = header.slot_count;
        const bytes = header.slot_bytes;
        if (count == 0 or count > slot_count_max or bytes == 0 or bytes > slot_bytes_max or bytes % 64 != 0)
            return error.BadRing;
        if (header.segment_bytes != segment.bytes or segment.bytes != segmentBytes(count, bytes)) return error.BadRing;
        return .{ .segment = segment, .header = header, .slot_count = count, .slot_bytes = bytes };
    }

    fn slotBase(self: Ring, index: u32) [*]u8 {
        const stride = slot_header_bytes + @as(u64, self.slot_bytes);
        return self.segment.ptr + header_bytes + @as(u64, index % self.slot_count) * stride;
    }

    pub fn slotHeader(self: Ring, index: u32) *wire.FrameHeader {
        return @ptrCast(@alignCast(self.slotBase(index)));
    }

    pub fn slotPayload(self: Ring, index: u32) [*]u8 {
        return self.slotBase(index) + slot_header_bytes;
    }

    fn hasSpace(self: Ring) bool {
        return self.tryReserve() != null;
    }

    fn hasData(self: Ring) bool {
        return @atomicLoad(u32, &self.header.head, .monotonic) != @atomicLoad(u32, &self.header.tail, .monotonic);
    }

    // ---- producer ----

    /// The index of a free slot, or null when the ring is full.
    pub fn tryReserve(self: Ring) ?u32 {
        const head = @atomicLoad(u32, &self.header.head, .monotonic);
        const tail = @atomicLoad(u32, &self.header.tail, .acquire);
        if (head -% tail >= self.slot_count) return null;
        return head;
    }

    /// Sleeps (at most timeout_ns) until the consumer frees a slot; spurious returns happen.
    pub fn waitSpace(self: Ring, timeout_ns: u64) void {
        if (sys.spinUntil(self, hasSpace)) return;
        // Announce the sleep, then re-check: the consumer reads the flag after moving tail, so
        // either it sees the flag and wakes us or we see its new tail (futex returns at once).
        @atomicStore(u32, &self.header.producer_sleeping, 1, .seq_cst);
        const tail = @atomicLoad(u32, &self.header.tail, .seq_cst);
        const head = @atomicLoad(u32, &self.header.head, .monotonic);
        if (head -% tail >= self.slot_count) sys.futexWait(&self.header.tail, tail, timeout_ns);
        @atomicStore(u32, &self.header.producer_sleeping, 0, .seq_cst);
    }

    /// Makes slot `index` (from tryReserve, now filled) visible to the consumer.
    pub fn publish(self: Ring, index: u32) void {
        std.debug.assert(index == @atomicLoad(u32, &self.header.head, .monotonic));
        @atomicStore(u32, &self.header.head, index +% 1, .seq_cst);
        if (@atomicLoad(u32, &self.header.consumer_sleeping, .seq_cst) != 0) sys.futexWake(&self.header.head, 1);
    }

    // ---- consumer ----

    /// The index of the oldest filled slot, or null when empty. error.BadRing when the
    /// indices are impossible (a corrupt producer).
    pub fn peek(self: Ring) error{BadRing}!?u32 {
        const tail = @atomicLoad(u32, &self.header.tail, .monotonic);
        const head = @atomicLoad(u32, &self.header.head, .acquire);
        if (head == tail) return null;
        if (head -% tail > self.slot_count) return error.BadRing;
        return tail;
    }

    pub fn release(self: Ring, index: u32) void {
        @atomicStore(u32, &self.header.tail, index +% 1, .seq_cst);
        if (@atomicLoad(u32, &self.header.producer_sleeping, .seq_cst) != 0) sys.futexWake(&self.header.tail, 1);
    }

    /// Spins briefly, then sleeps (at most timeout_ns) until the producer publishes.
    pub fn waitData(self: Ring, timeout_ns: u64) void {
        if (sys.spinUntil(self, hasData)) return;
        const tail = @atomicLoad(u32, &self.header.tail, .monotonic);
        @atomicStore(u32, &self.header.consumer_sleeping, 1, .seq_cst);
        const head = @atomicLoad(u32, &self.header.head, .seq_cst);
        if (head == tail) sys.futexWait(&self.header.head, head, timeout_ns);
        @atomicStore(u32, &self.header.consumer_sleeping, 0, .seq_cst);
    }

    /// Wakes both sides (used when a link closes so sleepers notice at once).
    pub fn wakeAll(self: Ring) void {
        sys.futexWake(&self.header.head, std.math.maxInt(u32));
        sys.futexWake(&self.header.tail, std.math.maxInt(u32));
    }
};

test "shm: ring producer/consumer across a mapping" {
    const name = "moonring-ringtest-0-ring";
    const bytes = segmentBytes(4, 4096);
    const seg = try sys.shmCreate(name, bytes);
    defer sys.shmUnlink(name);
    const producer = Ring.create(seg, 4, 4096, 0, 99);
    defer seg.unmapSegment();
    const seg2 = try sys.shmOpen(name, 0);
    defer seg2.unmapSegment();
    const consumer = try Ring.attach(seg2, 0, 99);
    try std.testing.expectError(error.BadRing, Ring.attach(seg2, 1, 99));

    const Producer = struct {
        fn run(ring: Ring) void {
            var i: u32 = 0;
            while (i < 1000) : (i += 1) {
                const index = while (true) {
                    if (ring.tryReserve()) |index| break index;
                    ring.waitSpace(10 * std.time.ns_per_ms);
                };
                ring.slotHeader(index).* = .{ .src_rank = 0, .op_id = i, .seq = i, .chunk_len = 4, .msg_len = 4, .offset = 0 };
                @memcpy(ring.slotPayload(index)[0..4], std.mem.asBytes(&i));
                ring.publish(index);
            }
        }
    };
    const thread = try std.Thread.spawn(.{}, Producer.run, .{producer});
    var expected: u32 = 0;
    while (expected < 1000) {
        const index = (try consumer.peek()) orelse {
            consumer.waitData(10 * std.time.ns_per_ms);
            continue;
        };
        try std.testing.expectEqual(@as(u64, expected), consumer.slotHeader(index).op_id);
        try std.testing.expectEqual(expected, std.mem.bytesToValue(u32, consumer.slotPayload(index)[0..4]));
        consumer.release(index);
        expected += 1;
    }
    thread.join();
}
