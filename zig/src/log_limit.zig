//! Rate-limited log lines: a flood of bad connections or frames must not become a flood of log
//! lines (issue 18: 300 idle connections made ~10,700 lines in 12 s). Each Limiter lets
//! `lines_per_window` lines through per window; the first line of the next window that passes
//! says how many were suppressed.
const std = @import("std");
const sys = @import("sys.zig");

pub const lines_per_window: u32 = 20;
pub const window_ns: u64 = 10 * std.time.ns_per_s;

pub const Limiter = struct {
    mu: std.Thread.Mutex = .{},
    window_start_ns: u64 = 0,
    lines: u32 = 0,
    suppressed: u64 = 0,

    /// Logs the line unless this window's budget is spent (then it only counts it).
    pub fn log(limiter: *Limiter, comptime fmt: []const u8, args: anytype) void {
        const suppressed = limiter.admit(sys.monotonicNs()) orelse return;
        if (suppressed > 0) sys.logLine("({d} similar lines suppressed in the last {d} s)", .{ suppressed, window_ns / std.time.ns_per_s });
        sys.logLine(fmt, args);
    }

    /// Null: suppress this line. Else the number suppressed since the last line that passed.
    pub fn admit(limiter: *Limiter, now_ns: u64) ?u64 {
        limiter.mu.lock();
        defer limiter.mu.unlock();
        if (now_ns -| limiter.window_start_ns >= window_ns or limiter.window_start_ns == 0) {
            limiter.window_start_ns = @max(now_ns, 1);
            limiter.lines = 0;
        }
        if (limiter.lines >= lines_per_window) {
            limiter.suppressed += 1;
            return null;
        }
        limiter.lines += 1;
        const suppressed = limiter.suppressed;
        limiter.suppressed = 0;
        return suppressed;
    }
};

test "log_limit: a window lets lines_per_window through, the next reports the rest" {
    var limiter = Limiter{};
    const t0: u64 = 1_000_000;
    var passed: u32 = 0;
    for (0..1000) |i| {
        if (limiter.admit(t0 + i)) |suppressed| {
            try std.testing.expectEqual(@as(u64, 0), suppressed);
            passed += 1;
        }
    }
    try std.testing.expectEqual(lines_per_window, passed);
    try std.testing.expectEqual(@as(?u64, 1000 - lines_per_window), limiter.admit(t0 + window_ns));
    try std.testing.expectEqual(@as(?u64, 0), limiter.admit(t0 + window_ns + 1));
}
