//! Data-plane bytes per peer and link kind, for the rank's /metrics
//! (moonring_dataplane_bytes_total{transport, peer, direction}). Lock-free counters: senders add
//! without the data plane's lock; readers (mr_engine_traffic) take a snapshot.
const std = @import("std");
const kinds = @import("kinds.zig");

pub const kinds_max = kinds.all.len;

pub fn Traffic(comptime peers_max: u32) type {
    return struct {
        const Self = @This();
        tx: [peers_max][kinds_max]std.atomic.Value(u64) = @splat(@splat(.init(0))),
        rx: [peers_max][kinds_max]std.atomic.Value(u64) = @splat(@splat(.init(0))),

        pub fn addTx(self: *Self, peer: u32, kind: u8, bytes: u64) void {
            std.debug.assert(peer < peers_max and kind < kinds_max);
            _ = self.tx[peer][kind].fetchAdd(bytes, .monotonic);
        }

        pub fn addRx(self: *Self, peer: u32, kind: u8, bytes: u64) void {
            std.debug.assert(peer < peers_max and kind < kinds_max);
            _ = self.rx[peer][kind].fetchAdd(bytes, .monotonic);
        }

        /// Writes (peer, kind, tx bytes, rx bytes) for every pair that moved bytes, at most
        /// `out.len / 4` of them; returns how many.
        pub fn snapshot(self: *const Self, out: []u64) u32 {
            var n: u32 = 0;
            for (0..peers_max) |peer| {
                for (0..kinds_max) |kind| {
                    const tx = self.tx[peer][kind].load(.monotonic);
                    const rx = self.rx[peer][kind].load(.monotonic);
                    if (tx == 0 and rx == 0) continue;
                    if ((n + 1) * 4 > out.len) return n;
                    out[n * 4 ..][0..4].* = .{ peer, kind, tx, rx };
                    n += 1;
                }
            }
            return n;
        }
    };
}

test "traffic: counts per peer and kind, snapshot skips idle pairs and respects the buffer" {
    var t: Traffic(4) = .{};
    t.addTx(1, 0, 100);
    t.addTx(1, 0, 28);
    t.addRx(3, kinds_max - 1, 7);
    var out: [16]u64 = undefined;
    try std.testing.expectEqual(@as(u32, 2), t.snapshot(&out));
    try std.testing.expectEqualSlices(u64, &.{ 1, 0, 128, 0, 3, kinds_max - 1, 0, 7 }, out[0..8]);
    var small: [4]u64 = undefined;
    try std.testing.expectEqual(@as(u32, 1), t.snapshot(&small));
}
