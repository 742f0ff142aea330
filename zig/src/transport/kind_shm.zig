//! The shm link kind: two shared-memory rings (shm.zig) per link, one per direction, each
//! created by its sender in /dev/shm. The blob is the sender's segment name; once both sides
//! mapped both rings the names are unlinked, so nothing stays in /dev/shm. The socket stays
//! for liveness: a dead peer's socket hangs up and the idle receiver notices.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const shm = @import("shm.zig");
const link_kind = @import("link_kind.zig");

pub const ops = link_kind.opsOf("shm", .shm, @This());

/// A receiver with nothing to read sleeps at most this long before checking liveness.
const rx_idle_wait_ns: u64 = 100 * std.time.ns_per_ms;
const send_space_wait_ns: u64 = 10 * std.time.ns_per_ms;
const preference_same_host: u8 = 3;

comptime {
    std.debug.assert(sys.shm_name_bytes_max <= wire.link_blob_bytes_max);
    std.debug.assert(preference_same_host > link_kind.preference_base);
}

const Context = struct {
    alloc: std.mem.Allocator,
    rank: u32,
    host_id: u64,
    slot_count: u32,
    slot_bytes: u32,
    nonce: std.atomic.Value(u32) = .init(0),
    prefix_len: usize,
    prefix: [64]u8,
};

const Link = struct {
    tx: shm.Ring,
    rx: ?shm.Ring = null,
    tx_name_len: usize,
    tx_name: [sys.shm_name_bytes_max]u8,

    fn txName(link: *const Link) []const u8 {
        return link.tx_name[0..link.tx_name_len];
    }
};

fn context(kind: *anyopaque) *Context {
    return @ptrCast(@alignCast(kind));
}

fn linkOf(link: *anyopaque) *Link {
    return @ptrCast(@alignCast(link));
}

/// Off only when another kind is forced everywhere (MOONRING_TRANSPORT=tcp).
pub fn start(env: *const link_kind.Env) ?*anyopaque {
    if (env.isForced("tcp")) return null;
    std.debug.assert(env.name_prefix.len <= 64);
    const ctx = env.alloc.create(Context) catch return null;
    ctx.* = .{
        .alloc = env.alloc,
        .rank = env.rank,
        .host_id = env.host_id,
        .slot_count = env.shm_slot_count,
        .slot_bytes = env.shm_slot_bytes,
        .prefix_len = env.name_prefix.len,
        .prefix = undefined,
    };
    @memcpy(ctx.prefix[0..env.name_prefix.len], env.name_prefix);
    return ctx;
}

pub fn stop(kind: *anyopaque) void {
    const ctx = context(kind);
    ctx.alloc.destroy(ctx);
}

/// Peers on this host (MOONRING_TRANSPORT=shm: every peer, for tests on one host).
pub fn preference(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo) u8 {
    _ = kind;
    if (env.isForced("shm")) return preference_same_host;
    const same_host = peer.host_id != 0 and peer.host_id == env.host_id;
    return if (same_host) preference_same_host else 0;
}

/// A fresh ring this rank writes to `peer` through, or null (logged; the link takes tcp).
fn createLink(ctx: *Context, peer_rank: u32) ?*Link {
    const link = ctx.alloc.create(Link) catch return null;
    const nonce = ctx.nonce.fetchAdd(1, .monotonic);
    const salt: u32 = @truncate(sys.monotonicNs() ^ @intFromPtr(ctx));
    const name = std.fmt.bufPrint(&link.tx_name, "{s}{d}-{x:0>8}{x:0>4}", .{ ctx.prefix[0..ctx.prefix_len], peer_rank, salt, nonce & 0xffff }) catch unreachable;
    const bytes = shm.segmentBytes(ctx.slot_count, ctx.slot_bytes);
    const segment = sys.shmCreate(name, bytes) catch |err| {
        sys.logLine("rank {d}: shm segment {s} ({d} bytes) for rank {d} failed ({s}); using tcp", .{ ctx.rank, name, bytes, peer_rank, @errorName(err) });
        ctx.alloc.destroy(link);
        return null;
    };
    link.* = .{
        .tx = shm.Ring.create(segment, ctx.slot_count, ctx.slot_bytes, ctx.rank, ctx.host_id),
        .tx_name_len = name.len,
        .tx_name = link.tx_name,
    };
    return link;
}

fn writeBlob(link: *const Link, blob_out: []u8) usize {
    const name = link.txName();
    @memcpy(blob_out[0..name.len], name);
    return name.len;
}

/// Maps the ring `creator` made for us, by the name in its blob.
fn attachRx(blob: []const u8, creator: u32, host_id: ?u64) ?shm.Ring {
    if (blob.len == 0 or blob.len > sys.shm_name_bytes_max) return null;
    const segment = sys.shmOpen(blob, 0) catch return null;
    return shm.Ring.attach(segment, creator, host_id) catch {
        segment.unmapSegment();
        return null;
    };
}

pub fn offer(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_out: []u8) ?link_kind.Pending {
    _ = env;
    const link = createLink(context(kind), peer.rank) orelse return null;
    return .{ .link = link, .blob_len = writeBlob(link, blob_out) };
}

pub fn accept(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_in: []const u8, blob_out: []u8) ?link_kind.Pending {
    _ = env;
    const rx = attachRx(blob_in, peer.rank, peer.host_id) orelse return null;
    const link = createLink(context(kind), peer.rank) orelse {
        rx.segment.unmapSegment();
        return null;
    };
    link.rx = rx;
    return .{ .link = link, .blob_len = writeBlob(link, blob_out) };
}

pub fn complete(kind: *anyopaque, link_ptr: *anyopaque, peer: link_kind.PeerInfo, blob_in: []const u8) link_kind.CompleteError!void {
    _ = kind;
    const link = linkOf(link_ptr);
    std.debug.assert(link.rx == null);
    link.rx = attachRx(blob_in, peer.rank, null);
    // Both sides have both rings mapped now (or the link is abandoned): nothing stays in /dev/shm.
    sys.shmUnlink(link.txName());
    if (blob_in.len > 0 and blob_in.len <= sys.shm_name_bytes_max) sys.shmUnlink(blob_in);
    if (link.rx == null) return error.Protocol;
}

pub fn chunkBytes(link: *anyopaque) u32 {
    return linkOf(link).tx.slot_bytes;
}

pub fn send(link_ptr: *anyopaque, fd: sys.Fd, header: *const wire.FrameHeader, payload: []const u8, abort: link_kind.Abort) link_kind.SendError!void {
    _ = fd;
    const ring = linkOf(link_ptr).tx;
    std.debug.assert(payload.len <= ring.slot_bytes);
    const index = while (true) {
        if (ring.tryReserve()) |index| break index;
        if (abort.check()) return error.Aborted; // nothing of the frame was written
        ring.waitSpace(send_space_wait_ns);
    };
    ring.slotHeader(index).* = header.*;
    @memcpy(ring.slotPayload(index)[0..payload.len], payload);
    ring.publish(index);
}

pub fn receive(link_ptr: *anyopaque, fd: sys.Fd, rx: *const link_kind.Receiver) link_kind.RxOutcome {
    const ring = linkOf(link_ptr).rx.?;
    var frames: u64 = 0;
    while (true) : (frames += 1) {
        if (rx.stopped()) return .closed;
        const index = (ring.peek() catch return .protocol) orelse {
            ring.waitData(rx_idle_wait_ns);
            if ((ring.peek() catch return .protocol) == null and sys.peerHungUp(fd)) return .closed;
            continue;
        };
        // A copy: the producer could change the slot's header under us.
        const header = ring.slotHeader(index).*;
        header.validate(rx.peer, ring.slot_bytes) catch return .protocol;
        rx.frame(&header, ring.slotPayload(index)[0..header.chunk_len]);
        ring.release(index);
    }
}

pub fn wake(link_ptr: *anyopaque) void {
    const link = linkOf(link_ptr);
    link.tx.wakeAll();
    if (link.rx) |ring| ring.wakeAll();
}

pub fn destroy(kind: *anyopaque, link_ptr: *anyopaque) void {
    const link = linkOf(link_ptr);
    // Names are unique (salt + nonce): unlinking one the peer already unlinked is harmless.
    sys.shmUnlink(link.txName());
    link.tx.segment.unmapSegment();
    if (link.rx) |ring| ring.segment.unmapSegment();
    context(kind).alloc.destroy(link);
}
