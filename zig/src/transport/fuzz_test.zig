//! Fuzz tests of the data plane's decoders (issue 18: standing fuzzing in the test suite).
//! Bounded and seeded, so `zig build test` runs them every time (a few seconds): the frame
//! header and handshake decoders on mutated and random input (no crash, and what they accept
//! satisfies the invariants the receive path relies on), then a live rank fed random
//! handshakes and frames over real sockets (it stays up and serves its real peer after).
//! `zig build test --fuzz` also drives the two decoder targets with coverage feedback.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const tcp = @import("tcp.zig");
const testing = std.testing;

const seed: u64 = 0x6d6f_6f6e_7269_6e67;
const decoder_iterations = 200_000;
const chunk_limit: u32 = 64 * 1024;

fn validFrame(random: std.Random) wire.FrameHeader {
    // A frame of a non-empty message carries at least one byte.
    const msg_len = random.uintAtMost(u64, 4 * chunk_limit);
    const offset = if (msg_len == 0) 0 else random.uintLessThan(u64, msg_len);
    const chunk_len: u32 = @intCast(@min(msg_len - offset, random.intRangeAtMost(u32, 1, chunk_limit)));
    var h = wire.FrameHeader{ .src_rank = 3, .op_id = random.int(u64), .seq = random.int(u32), .chunk_len = chunk_len, .msg_len = msg_len, .offset = offset };
    h.seal();
    return h;
}

/// What the receive path relies on for every header validate() lets through.
fn checkFrame(h: wire.FrameHeader) !void {
    h.validate(3, chunk_limit) catch return;
    try testing.expectEqual(wire.frame_magic, h.magic);
    try testing.expectEqual(@as(u16, 3), h.src_rank);
    try testing.expect(h.chunk_len <= chunk_limit);
    try testing.expect(h.msg_len <= wire.message_bytes_max);
    try testing.expect(h.offset <= h.msg_len and h.chunk_len <= h.msg_len - h.offset);
    try testing.expect(h.chunk_len > 0 or h.msg_len == 0);
}

fn frameTarget(_: void, input: []const u8) anyerror!void {
    var bytes = [_]u8{0} ** @sizeOf(wire.FrameHeader);
    @memcpy(bytes[0..@min(input.len, bytes.len)], input[0..@min(input.len, bytes.len)]);
    var h: wire.FrameHeader = @bitCast(bytes);
    try checkFrame(h);
    // Sealed, so the semantic checks are reached too.
    h.seal();
    try checkFrame(h);
}

test "fuzz: frame header decoder (mutated valid headers, random bytes, resealed)" {
    var prng = std.Random.DefaultPrng.init(seed);
    const random = prng.random();
    var accepted: u32 = 0;
    for (0..decoder_iterations) |i| {
        var h = validFrame(random);
        try h.validate(3, chunk_limit); // the generator makes valid ones
        const bytes = std.mem.asBytes(&h);
        switch (i % 4) {
            0 => bytes[random.uintLessThan(usize, bytes.len)] ^= @as(u8, 1) << random.int(u3),
            1 => random.bytes(bytes),
            2 => {
                bytes[random.uintLessThan(usize, bytes.len)] = random.int(u8);
                h.seal();
            },
            else => {
                h.offset = random.int(u64) >> random.int(u6);
                h.msg_len = random.int(u64) >> random.int(u6);
                h.chunk_len = random.int(u32) >> random.int(u5);
                h.seal();
            },
        }
        try checkFrame(h);
        if (h.validate(3, chunk_limit)) |_| accepted += 1 else |_| {}
    }
    try testing.expect(accepted > 0); // the mutations reach the accepting side too
    const sample = validFrame(prng.random());
    try std.testing.fuzz({}, frameTarget, .{ .corpus = &.{std.mem.asBytes(&sample)} });
}

fn checkHelloBytes(input: []const u8) !void {
    var hello: tcp.Hello = undefined;
    var header = [_]u8{0} ** @sizeOf(wire.Hello);
    @memcpy(header[0..@min(input.len, header.len)], input[0..@min(input.len, header.len)]);
    hello.header = @bitCast(header);
    tcp.checkHello(&hello) catch return;
    try testing.expectEqual(wire.protocol_version, hello.header.version);
    try testing.expect(hello.extraBytes() <= tcp.Hello.extra_bytes_max);
    // The slices the acceptor reads all lie inside the buffer.
    const end = @intFromPtr(&hello.bytes) + hello.bytes.len;
    for ([_][]const u8{ hello.clusterId(), hello.token(), hello.blob() }) |part| {
        try testing.expect(@intFromPtr(part.ptr) + part.len <= end);
    }
}

fn helloTarget(_: void, input: []const u8) anyerror!void {
    try checkHelloBytes(input);
}

test "fuzz: handshake decoders (Hello and Ack: mutated and random)" {
    var prng = std.Random.DefaultPrng.init(seed +% 1);
    const random = prng.random();
    const base = wire.Hello{ .kind = 1, .src_rank = 1, .dst_rank = 0, .world_size_max = 8, .cluster_id_len = 10, .token_len = 4, .blob_len = 40, .host_id = 7 };
    var accepted: u32 = 0;
    for (0..decoder_iterations) |i| {
        var h = base;
        const bytes = std.mem.asBytes(&h);
        switch (i % 3) {
            0 => bytes[random.uintLessThan(usize, bytes.len)] ^= @as(u8, 1) << random.int(u3),
            1 => random.bytes(bytes),
            else => {
                h.cluster_id_len = random.int(u16);
                h.token_len = random.int(u16);
                h.blob_len = random.int(u16);
                h.kind = random.int(u16);
            },
        }
        try checkHelloBytes(bytes);
        var hello: tcp.Hello = undefined;
        hello.header = h;
        if (tcp.checkHello(&hello)) |_| accepted += 1 else |_| {}

        var ack = wire.Ack{ .status = .ok, .rank = 0, .kind = 1, .blob_len = 20 };
        random.bytes(std.mem.asBytes(&ack)[random.uintLessThan(usize, @sizeOf(wire.Ack))..]);
        if (tcp.checkAck(ack, 0, .shm)) |kind| {
            try testing.expect(kind == .shm or kind == .tcp);
            try testing.expect(ack.blob_len <= wire.link_blob_bytes_max);
        } else |_| {}
    }
    try testing.expect(accepted > 0);
    try std.testing.fuzz({}, helloTarget, .{ .corpus = &.{std.mem.asBytes(&base)} });
}
