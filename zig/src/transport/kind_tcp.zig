//! The tcp link kind: frames travel on the handshake's socket itself. The base kind: always
//! started, accepted for any peer, and the fallback when every other kind declines. It has no
//! per-link state (the link pointer is the per-rank context) and no blob.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const tcp = @import("tcp.zig");
const link_kind = @import("link_kind.zig");

pub const ops = link_kind.opsOf("tcp", .tcp, @This());

const Context = struct {
    alloc: std.mem.Allocator,
    chunk_bytes: u32,
};

fn context(kind: *anyopaque) *Context {
    return @ptrCast(@alignCast(kind));
}

pub fn start(env: *const link_kind.Env) ?*anyopaque {
    std.debug.assert(env.tcp_chunk_bytes > 0 and env.tcp_chunk_bytes <= wire.chunk_bytes_max);
    const ctx = env.alloc.create(Context) catch return null;
    ctx.* = .{ .alloc = env.alloc, .chunk_bytes = env.tcp_chunk_bytes };
    return ctx;
}

pub fn stop(kind: *anyopaque) void {
    const ctx = context(kind);
    ctx.alloc.destroy(ctx);
}

pub fn preference(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo) u8 {
    _ = .{ kind, env, peer };
    return link_kind.preference_base;
}

pub fn offer(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_out: []u8) ?link_kind.Pending {
    _ = .{ env, peer, blob_out };
    return .{ .link = kind, .blob_len = 0 };
}

pub fn accept(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_in: []const u8, blob_out: []u8) ?link_kind.Pending {
    _ = .{ env, peer, blob_in, blob_out };
    return .{ .link = kind, .blob_len = 0 };
}

pub fn complete(kind: *anyopaque, link: *anyopaque, peer: link_kind.PeerInfo, blob_in: []const u8) link_kind.CompleteError!void {
    _ = .{ kind, link, peer };
    if (blob_in.len != 0) return error.Protocol;
}

pub fn chunkBytes(link: *anyopaque) u32 {
    return context(link).chunk_bytes;
}

pub fn send(link: *anyopaque, fd: sys.Fd, header: *const wire.FrameHeader, payload: []const u8, abort: link_kind.Abort) link_kind.SendError!void {
    std.debug.assert(payload.len <= context(link).chunk_bytes);
    tcp.writeFrame(fd, header, payload, abort) catch |err| return switch (err) {
        error.Closed => error.Closed,
        // Possibly mid-frame: the stream can't be resumed.
        error.Aborted => error.Broken,
    };
}

/// Gives a blocked read up when the link closes or the rank stops.
const RxIdle = struct {
    rx: *const link_kind.Receiver,
    pub fn check(self: RxIdle) bool {
        return self.rx.stopped();
    }
};

pub fn receive(link: *anyopaque, fd: sys.Fd, rx: *const link_kind.Receiver) link_kind.RxOutcome {
    const chunk_limit = context(link).chunk_bytes;
    const idle = RxIdle{ .rx = rx };
    var header: wire.FrameHeader = undefined;
    var frames: u64 = 0;
    while (true) : (frames += 1) {
        tcp.readExact(fd, std.mem.asBytes(&header), idle) catch return .closed;
        header.validate(rx.peer, chunk_limit) catch return .protocol;
        switch (rx.route(&header)) {
            .direct => |d| {
                const done = readDirect(fd, rx, d);
                rx.finishDirect(d, done, done == d.dest.len);
                if (done < d.dest.len) {
                    if (rx.stopped()) return .closed;
                    discard(fd, idle, d.dest.len - done) catch return .closed;
                }
            },
            .stash => |buf| {
                tcp.readExact(fd, buf, idle) catch {
                    rx.dropStash(buf);
                    return .closed;
                };
                rx.finishStash(&header, buf);
            },
            .discard => discard(fd, idle, header.chunk_len) catch return .closed,
        }
    }
}

/// Reads into a posted buffer until done, the op abandons it, or the link fails.
fn readDirect(fd: sys.Fd, rx: *const link_kind.Receiver, d: link_kind.Direct) usize {
    var done: usize = 0;
    while (done < d.dest.len) {
        if (rx.abandoned(d)) break;
        done += sys.recvSome(fd, d.dest[done..]) catch |err| switch (err) {
            error.WouldBlock => if (rx.stopped()) break else continue,
            else => break,
        };
    }
    return done;
}

fn discard(fd: sys.Fd, idle: RxIdle, len: u64) tcp.IoError!void {
    var scratch: [16 * 1024]u8 = undefined;
    var left = len;
    while (left > 0) {
        const n: usize = @intCast(@min(left, scratch.len));
        try tcp.readExact(fd, scratch[0..n], idle);
        left -= n;
    }
}

pub fn wake(link: *anyopaque) void {
    _ = link; // the link layer's shutdown of the socket wakes readers and writers
}

pub fn destroy(kind: *anyopaque, link: *anyopaque) void {
    std.debug.assert(kind == link); // no per-link state
}
