//! The verbs link kind against the test provider ($MOONRING_VERBS_LIB, set by `zig build test`):
//! two devices in one process stand for two ranks.
const std = @import("std");
const verbs = @import("verbs.zig");
const wire = @import("wire.zig");
const lib = @import("../verbs/lib.zig");
const testing = std.testing;

fn providerNamed() bool {
    return lib.useTestProvider();
}

const NoAbort = struct {
    pub fn check(_: NoAbort) bool {
        return false;
    }
};

const Pair = struct {
    a: *verbs.Device,
    b: *verbs.Device,
    ab: *verbs.Channel,
    ba: *verbs.Channel,

    fn init(config: verbs.Config) !Pair {
        var why: verbs.Reason = .{};
        const a = verbs.Device.open(config, &why) catch |err| {
            std.debug.print("verbs device: {s}\n", .{why.message()});
            return err;
        };
        const b = try verbs.Device.open(config, &why);
        const ab = try verbs.Channel.create(a, 1, &why);
        const ba = try verbs.Channel.create(b, 0, &why);
        try ab.connect(ba.blob(), &why);
        try ba.connect(ab.blob(), &why);
        return .{ .a = a, .b = b, .ab = ab, .ba = ba };
    }

    fn deinit(p: *Pair) void {
        p.ab.destroy();
        p.ba.destroy();
        p.a.close();
        p.b.close();
    }
};

fn sendFrame(c: *verbs.Channel, seq: u32, payload: []const u8) !void {
    const deadline = std.time.milliTimestamp() + 10_000;
    const index = while (true) {
        if (c.tryReserve()) |i| break i;
        if (c.isFailed()) return error.ChannelFailed;
        if (std.time.milliTimestamp() > deadline) return error.Timeout;
        c.waitSpace(1 * std.time.ns_per_ms);
    };
    const h = c.txHeader(index);
    h.* = .{ .src_rank = 0, .op_id = 9, .seq = seq, .chunk_len = @intCast(payload.len), .msg_len = payload.len, .offset = 0 };
    h.seal();
    @memcpy(c.txPayload(index)[0..payload.len], payload);
    if (!c.publish(index)) return error.ChannelFailed;
}

fn recvFrame(c: *verbs.Channel, out: []u8) !wire.FrameHeader {
    const deadline = std.time.milliTimestamp() + 10_000;
    const index = while (true) {
        if (c.peek()) |i| break i;
        if (c.isFailed()) return error.ChannelFailed;
        if (std.time.milliTimestamp() > deadline) return error.Timeout;
        c.waitData(1 * std.time.ns_per_ms);
    };
    const h = c.rxHeader(index).*;
    try h.validate(0, c.slot_bytes);
    @memcpy(out[0..h.chunk_len], c.rxPayload(index)[0..h.chunk_len]);
    if (!c.release(index)) return error.ChannelFailed;
    return h;
}

test "verbs: frames both ways through RDMA-written rings, more frames than slots (credits)" {
    if (!providerNamed()) return error.SkipZigTest;
    defer lib.dropTestProvider();
    var p = try Pair.init(.{ .slot_count = 4, .slot_bytes = 4096 });
    defer p.deinit();
    const Sender = struct {
        fn run(c: *verbs.Channel) !void {
            var payload: [4096]u8 = undefined;
            var seq: u32 = 0;
            while (seq < 200) : (seq += 1) {
                const len = 1 + (seq * 37) % payload.len;
                for (payload[0..len], 0..) |*b, i| b.* = @truncate(seq + i);
                try sendFrame(c, seq, payload[0..len]);
            }
        }
    };
    const thread = try std.Thread.spawn(.{}, Sender.run, .{p.ab});
    var out: [4096]u8 = undefined;
    var seq: u32 = 0;
    while (seq < 200) : (seq += 1) {
        const h = try recvFrame(p.ba, &out);
        try testing.expectEqual(seq, h.seq);
        try testing.expectEqual(1 + (seq * 37) % 4096, h.chunk_len);
        for (out[0..h.chunk_len], 0..) |b, i| try testing.expectEqual(@as(u8, @truncate(seq + i)), b);
    }
    thread.join();
    // And back.
    try sendFrame(p.ba, 7, "pong");
    const h = try recvFrame(p.ab, &out);
    try testing.expectEqualStrings("pong", out[0..h.chunk_len]);
}

test "verbs: zero-copy write into an exposed buffer, then a frame completes it" {
    if (!providerNamed()) return error.SkipZigTest;
    defer lib.dropTestProvider();
    var p = try Pair.init(.{ .slot_count = 4, .slot_bytes = 4096 });
    defer p.deinit();
    const len = 3 << 20;
    const src = try testing.allocator.alloc(u8, len);
    defer testing.allocator.free(src);
    const dst = try testing.allocator.alloc(u8, len);
    defer testing.allocator.free(dst);
    for (src, 0..) |*b, i| b.* = @truncate(i *% 7 +% 3);
    @memset(dst, 0);
    // As if from mr_alloc: memory the registration cache may keep registered.
    verbs.buffers.note(@intFromPtr(src.ptr), src.len);
    defer verbs.buffers.drop(@intFromPtr(src.ptr), src.len);
    verbs.buffers.note(@intFromPtr(dst.ptr), dst.len);
    defer verbs.buffers.drop(@intFromPtr(dst.ptr), dst.len);
    const exposed = p.ba.exposeRange(@intFromPtr(dst.ptr), dst.len).?;
    defer p.ba.unexposeRange(exposed);
    try testing.expect(p.ab.writeDirect(src, @intFromPtr(dst.ptr), exposed.rkey, NoAbort{}));
    try sendFrame(p.ab, 1, "fin");
    var out: [16]u8 = undefined;
    _ = try recvFrame(p.ba, &out);
    try testing.expectEqualSlices(u8, src, dst);
    // A second write of the same buffer hits the registration cache.
    const misses = p.a.cache.misses;
    try testing.expect(p.a.cache.hits == 0);
    try testing.expect(p.ab.writeDirect(src[4096..], @intFromPtr(dst.ptr), exposed.rkey, NoAbort{}));
    try testing.expectEqual(misses, p.a.cache.misses);
    try testing.expect(p.a.cache.hits == 1);
}

test "verbs: more channels on one device than the old cap of 64 (100 peers), each carrying its own frames" {
    if (!providerNamed()) return error.SkipZigTest;
    defer lib.dropTestProvider();
    const peers = 100;
    comptime std.debug.assert(peers > 64 and peers <= verbs.channels_max);
    var why: verbs.Reason = .{};
    const config = verbs.Config{ .slot_count = 2, .slot_bytes = 4096 };
    const hub = try verbs.Device.open(config, &why);
    defer hub.close();
    const far = try verbs.Device.open(config, &why);
    defer far.close();
    var out_links: [peers]*verbs.Channel = undefined;
    var in_links: [peers]*verbs.Channel = undefined;
    var made: usize = 0;
    defer for (out_links[0..made], in_links[0..made]) |o, i| {
        o.destroy();
        i.destroy();
    };
    while (made < peers) : (made += 1) {
        out_links[made] = try verbs.Channel.create(hub, @intCast(made + 1), &why);
        in_links[made] = verbs.Channel.create(far, 0, &why) catch |err| {
            out_links[made].destroy();
            return err;
        };
        try out_links[made].connect(in_links[made].blob(), &why);
        try in_links[made].connect(out_links[made].blob(), &why);
    }
    try testing.expectEqual(@as(u32, peers), hub.channel_count);
    var payload: [8]u8 = undefined;
    for (out_links, 0..) |c, i| {
        std.mem.writeInt(u64, &payload, 1000 + i, .little);
        try sendFrame(c, @intCast(i), &payload);
    }
    // Every link delivers its own frame, and the answers come back on the right one.
    var got: [16]u8 = undefined;
    for (in_links, 0..) |c, i| {
        const h = try recvFrame(c, &got);
        try testing.expectEqual(@as(u32, @intCast(i)), h.seq);
        try testing.expectEqual(@as(u64, 1000 + i), std.mem.readInt(u64, got[0..8], .little));
        std.mem.writeInt(u64, &payload, 5000 + i, .little);
        try sendFrame(c, @intCast(i), &payload);
    }
    for (out_links, 0..) |c, i| {
        _ = try recvFrame(c, &got);
        try testing.expectEqual(@as(u64, 5000 + i), std.mem.readInt(u64, got[0..8], .little));
    }
}

test "verbs: the peer's QP goes away, the channel fails naming the peer" {
    if (!providerNamed()) return error.SkipZigTest;
    defer lib.dropTestProvider();
    var p = try Pair.init(.{ .slot_count = 4, .slot_bytes = 4096 });
    defer {
        p.ab.destroy();
        p.a.close();
        p.b.close();
    }
    p.ba.destroy();
    const deadline = std.time.milliTimestamp() + 10_000;
    while (!p.ab.isFailed()) {
        if (std.time.milliTimestamp() > deadline) return error.Timeout;
        sendFrame(p.ab, 0, "x") catch {};
        std.Thread.sleep(1 * std.time.ns_per_ms);
    }
    try testing.expect(std.mem.indexOf(u8, p.ab.reason.message(), "rank 1") != null);
    try testing.expect(std.mem.indexOf(u8, p.ab.reason.message(), "retry") != null);
}

test "verbs: no library / MOONRING_IB_HCA matching nothing says why" {
    if (!providerNamed()) return error.SkipZigTest;
    defer lib.dropTestProvider();
    var why: verbs.Reason = .{};
    try testing.expectError(error.NoDevice, verbs.Device.open(.{ .hca = "mlx5_" }, &why));
    try testing.expect(std.mem.indexOf(u8, why.message(), "MOONRING_IB_HCA='mlx5_'") != null);
}

test "verbs: MOONRING_IB_HCA syntax" {
    try testing.expect(verbs.hcaAdmits("", "mlx5_0", 1));
    try testing.expect(verbs.hcaAdmits("mlx5", "mlx5_0", 1));
    try testing.expect(!verbs.hcaAdmits("=mlx5", "mlx5_0", 1));
    try testing.expect(verbs.hcaAdmits("mlx5_0:1,mlx5_1", "mlx5_0", 1));
    try testing.expect(!verbs.hcaAdmits("mlx5_0:2", "mlx5_0", 1));
    try testing.expect(!verbs.hcaAdmits("^mlx5_0", "mlx5_0", 1));
    try testing.expect(verbs.hcaAdmits("^mlx5_0", "mlx5_1", 1));
}
