//! TCP link mechanics: the handshake (dial and accept side) and frame I/O with timeouts that
//! let a blocked reader or writer notice cancellation, deadlines and link closure.
//! Which frames go where is net.zig's business; this file only moves validated bytes.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");

/// Socket timeout granularity: a blocked send/recv re-checks its abort condition this often.
pub const io_poll_ms: u32 = 50;
pub const handshake_timeout_ms: u32 = 2000;
/// Payloads up to this size are copied next to the header and sent with one syscall.
const coalesce_bytes_max = 4096;

pub const Identity = struct {
    rank: u32,
    world_size_max: u32,
    cluster_id: []const u8,
    token: []const u8,
    host_id: u64,
};

pub const Offer = struct {
    kind: wire.LinkKind,
    blob: []const u8 = "",
};

pub const Dialed = struct {
    fd: sys.Fd,
    kind: wire.LinkKind,
    blob_len: usize,
    blob: [wire.link_blob_bytes_max]u8,

    pub fn replyBlob(self: *const Dialed) []const u8 {
        return self.blob[0..self.blob_len];
    }
};

/// Dropped: the acceptor closed the connection before answering (it was full of unauthenticated
/// connections, or shutting down): worth another try. Rejected: it answered no.
pub const DialError = error{ Refused, Unreachable, TimedOut, Rejected, Dropped, Protocol };

/// Connects to `dst_rank` at `addr` and runs the dialer's side of the handshake.
pub fn dial(addr: sys.Address, me: Identity, dst_rank: u32, offer: Offer, timeout_ms: u32) DialError!Dialed {
    std.debug.assert(me.cluster_id.len <= wire.cluster_id_bytes_max and me.token.len <= wire.token_bytes_max);
    std.debug.assert(offer.blob.len <= wire.link_blob_bytes_max);
    const fd = sys.connectTimeout(addr, @max(timeout_ms, 1)) catch |err| return switch (err) {
        error.Refused => error.Refused,
        error.TimedOut => error.TimedOut,
        else => error.Unreachable,
    };
    errdefer sys.closeFd(fd);
    const hs_ms = @max(@min(timeout_ms, handshake_timeout_ms), 10);
    sys.setRecvTimeout(fd, hs_ms);
    sys.setSendTimeout(fd, hs_ms);

    var buf: [@sizeOf(wire.Hello) + Hello.extra_bytes_max]u8 = undefined;
    const hello = wire.Hello{
        .kind = @intFromEnum(offer.kind),
        .src_rank = me.rank,
        .dst_rank = dst_rank,
        .world_size_max = me.world_size_max,
        .cluster_id_len = @intCast(me.cluster_id.len),
        .token_len = @intCast(me.token.len),
        .blob_len = @intCast(offer.blob.len),
        .host_id = me.host_id,
    };
    var len: usize = 0;
    for ([_][]const u8{ std.mem.asBytes(&hello), me.cluster_id, me.token, offer.blob }) |part| {
        @memcpy(buf[len..][0..part.len], part);
        len += part.len;
    }
    sys.sendAll(fd, buf[0..len]) catch return error.Unreachable;

    var ack: wire.Ack = undefined;
    sys.recvAll(fd, std.mem.asBytes(&ack)) catch |err| return switch (err) {
        error.WouldBlock => error.TimedOut,
        else => error.Dropped, // closed unanswered: a full acceptor (or not a moonring rank)
    };
    const kind = try checkAck(ack, dst_rank, offer.kind);
    var result = Dialed{ .fd = fd, .kind = kind, .blob_len = ack.blob_len, .blob = undefined };
    sys.recvAll(fd, result.blob[0..ack.blob_len]) catch return error.Protocol;
    return result;
}

/// Validates an Ack (pure: the fuzz tests call it): the kind it took is the one offered or tcp.
pub fn checkAck(ack: wire.Ack, dst_rank: u32, offered: wire.LinkKind) DialError!wire.LinkKind {
    if (ack.magic != wire.ack_magic) return error.Protocol;
    if (ack.status != .ok) return error.Rejected;
    if (ack.rank != dst_rank) return error.Protocol;
    if (ack.blob_len > wire.link_blob_bytes_max) return error.Protocol;
    const kind: wire.LinkKind = @enumFromInt(ack.kind);
    if (kind != offered and kind != .tcp) return error.Protocol;
    return kind;
}

pub const Hello = struct {
    header: wire.Hello,
    kind: wire.LinkKind,
    bytes: [extra_bytes_max]u8,

    pub const extra_bytes_max = wire.cluster_id_bytes_max + wire.token_bytes_max + wire.link_blob_bytes_max;

    pub fn clusterId(self: *const Hello) []const u8 {
        return self.bytes[0..self.header.cluster_id_len];
    }
    pub fn token(self: *const Hello) []const u8 {
        return self.bytes[self.header.cluster_id_len..][0..self.header.token_len];
    }
    pub fn blob(self: *const Hello) []const u8 {
        return self.bytes[@as(usize, self.header.cluster_id_len) + self.header.token_len ..][0..self.header.blob_len];
    }
    /// Bytes that follow the fixed header.
    pub fn extraBytes(self: *const Hello) usize {
        return @as(usize, self.header.cluster_id_len) + self.header.token_len + self.header.blob_len;
    }
};

pub const HelloError = error{ Closed, TimedOut, BadMagic, BadVersion, BadLength };

/// Gives up a handshake read after handshake_timeout_ms, or at once when `stop` is set.
const HandshakeAbort = struct {
    deadline_ns: u64,
    stop: *const std.atomic.Value(bool),
    pub fn check(self: HandshakeAbort) bool {
        return self.stop.load(.acquire) or sys.monotonicNs() >= self.deadline_ns;
    }
};

/// Acceptor side: reads and structurally validates a Hello (within handshake_timeout_ms;
/// `stop` cuts the wait short when the rank shuts down).
pub fn readHello(fd: sys.Fd, hello: *Hello, stop: *const std.atomic.Value(bool)) HelloError!void {
    sys.setRecvTimeout(fd, io_poll_ms);
    sys.setSendTimeout(fd, handshake_timeout_ms);
    const abort = HandshakeAbort{ .deadline_ns = sys.monotonicNs() + @as(u64, handshake_timeout_ms) * std.time.ns_per_ms, .stop = stop };
    readExact(fd, std.mem.asBytes(&hello.header), abort) catch |err| return switch (err) {
        error.Aborted => error.TimedOut,
        else => error.Closed,
    };
    try checkHello(hello);
    const extra = hello.extraBytes();
    readExact(fd, hello.bytes[0..extra], abort) catch |err| return switch (err) {
        error.Aborted => error.TimedOut,
        else => error.Closed,
    };
}

/// Structural checks of a received Hello's fixed header (pure: the fuzz tests call it); sets
/// hello.kind. Authentication (cluster, token, ranks) is the acceptor's next step.
pub fn checkHello(hello: *Hello) HelloError!void {
    const h = hello.header;
    if (h.magic != wire.hello_magic) return error.BadMagic;
    if (h.version != wire.protocol_version) return error.BadVersion;
    if (h.cluster_id_len > wire.cluster_id_bytes_max or h.token_len > wire.token_bytes_max or
        h.blob_len > wire.link_blob_bytes_max or h.reserved != 0 or h.reserved2 != 0) return error.BadLength;
    hello.kind = @enumFromInt(h.kind);
    std.debug.assert(hello.extraBytes() <= Hello.extra_bytes_max);
}

pub fn sendAck(fd: sys.Fd, status: wire.AckStatus, rank: u32, kind: wire.LinkKind, blob: []const u8) void {
    std.debug.assert(blob.len <= wire.link_blob_bytes_max);
    var buf: [@sizeOf(wire.Ack) + wire.link_blob_bytes_max]u8 = undefined;
    const ack = wire.Ack{ .status = status, .rank = rank, .kind = @intFromEnum(kind), .blob_len = @intCast(blob.len) };
    @memcpy(buf[0..@sizeOf(wire.Ack)], std.mem.asBytes(&ack));
    @memcpy(buf[@sizeOf(wire.Ack)..][0..blob.len], blob);
    sys.sendAll(fd, buf[0 .. @sizeOf(wire.Ack) + blob.len]) catch {};
}

/// Constant-time comparison for the token: the time depends on neither the bytes nor where
/// they differ, and not on the expected token's length either (always the longest allowed).
pub fn secretEqual(a: []const u8, b: []const u8) bool {
    std.debug.assert(a.len <= wire.token_bytes_max and b.len <= wire.token_bytes_max);
    var diff: usize = a.len ^ b.len;
    for (0..wire.token_bytes_max) |i| {
        const x: u8 = if (i < a.len) a[i] else 0;
        const y: u8 = if (i < b.len) b[i] else 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

/// After the handshake: timeouts become the abort-poll granularity.
pub fn setStreaming(fd: sys.Fd) void {
    sys.setRecvTimeout(fd, io_poll_ms);
    sys.setSendTimeout(fd, io_poll_ms);
    sys.setNoDelay(fd);
}

pub const IoError = error{ Closed, Aborted };

/// Writes header + payload. `abort.check()` is asked each time the socket stays full for
/// io_poll_ms; true aborts (the stream may then be mid-frame: the caller must close the link).
pub fn writeFrame(fd: sys.Fd, header: *const wire.FrameHeader, payload: []const u8, abort: anytype) IoError!void {
    std.debug.assert(payload.len == header.chunk_len);
    if (payload.len <= coalesce_bytes_max) {
        var buf: [@sizeOf(wire.FrameHeader) + coalesce_bytes_max]u8 = undefined;
        @memcpy(buf[0..@sizeOf(wire.FrameHeader)], std.mem.asBytes(header));
        @memcpy(buf[@sizeOf(wire.FrameHeader)..][0..payload.len], payload);
        return writeAll(fd, buf[0 .. @sizeOf(wire.FrameHeader) + payload.len], false, abort);
    }
    try writeAll(fd, std.mem.asBytes(header), true, abort);
    try writeAll(fd, payload, false, abort);
}

fn writeAll(fd: sys.Fd, bytes: []const u8, more: bool, abort: anytype) IoError!void {
    var done: usize = 0;
    while (done < bytes.len) {
        done += sys.sendSome(fd, bytes[done..], more) catch |err| switch (err) {
            error.WouldBlock => {
                if (abort.check()) return error.Aborted;
                continue;
            },
            else => return error.Closed,
        };
    }
}

/// Reads exactly buf.len bytes; `keep.check()` is asked after each io_poll_ms of silence and
/// returning true gives up (error.Aborted).
pub fn readExact(fd: sys.Fd, buf: []u8, abort: anytype) IoError!void {
    var done: usize = 0;
    while (done < buf.len) {
        done += sys.recvSome(fd, buf[done..]) catch |err| switch (err) {
            error.WouldBlock => {
                if (abort.check()) return error.Aborted;
                continue;
            },
            else => return error.Closed,
        };
    }
}

test "tcp: secretEqual" {
    try std.testing.expect(secretEqual("abc", "abc"));
    try std.testing.expect(!secretEqual("abc", "abd"));
    try std.testing.expect(!secretEqual("abc", "ab"));
    try std.testing.expect(!secretEqual("", "a"));
    try std.testing.expect(secretEqual("", ""));
    try std.testing.expect(!secretEqual("ab\x00", "ab")); // padding can't make them equal
}
