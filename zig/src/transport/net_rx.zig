//! The receive side of net.zig (moved from it): the link_kind.Receiver callbacks that links'
//! receive threads call, routing each frame to its posted receive or to the stash, and the
//! stash itself (claimed when the receive is posted, orphans evicted).
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const link_kind = @import("link_kind.zig");
const kinds = @import("kinds.zig");
const links_mod = @import("links.zig");
const net_mod = @import("net.zig");
const Net = net_mod.Net;
const Endpoint = net_mod.Endpoint;
const Req = net_mod.Req;
const stash_entries_max = net_mod.stash_entries_max;
const orphan_ttl_ns = net_mod.orphan_ttl_ns;
const stash_wait_ns = net_mod.stash_wait_ns;
const failLocked = Net.failLocked;
const findRecvLocked = Net.findRecvLocked;
const checkDoneLocked = Net.checkDoneLocked;

/// Moves stashed chunks of `req`'s message into its buffer. Entries leave the stash under
/// the lock and are copied with it released, so a big stash copy never stalls other links.
pub fn claimStashLocked(net: *Net, ep: *Endpoint, req: *Req) void {
    var claims_max: usize = stash_entries_max;
    while (claims_max > 0) : (claims_max -= 1) {
        const index = for (net.stash.items, 0..) |entry, i| {
            if (entry.op_id == ep.op_id and entry.src == req.peer and entry.seq == req.seq) break i;
        } else return;
        const entry = net.stash.swapRemove(index);
        net.stash_bytes -= entry.data.len;
        net.stash_cond.broadcast();
        if (!fits(req, entry.msg_len, entry.data.len)) {
            net.alloc.free(entry.data);
            failLocked(ep, error.Protocol, @intCast(req.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ req.peer, req.seq, entry.msg_len, req.buf.len });
            continue;
        }
        req.routed += entry.data.len;
        req.busy += 1;
        net.mu.unlock();
        req.deliver(entry.offset, entry.data);
        net.alloc.free(entry.data);
        net.mu.lock();
        req.busy -= 1;
        req.received += entry.data.len;
        req.arrived = true;
    }
}

/// Whether a chunk of a `msg_len`-byte message fits what `req` still expects.
pub fn fits(req: *const Req, msg_len: u64, chunk_len: u64) bool {
    return msg_len == req.buf.len and req.routed + chunk_len <= req.buf.len;
}

// ---- receiving (link_kind.Receiver, called on links' receive threads) ----

pub fn sink(net: *Net) links_mod.Sink {
    return .{ .context = net, .receiver = &receiver_vtable, .link_lost_locked = linkLostLocked };
}

const receiver_vtable = link_kind.Receiver.VTable{
    .frame = rxFrame,
    .route = rxRoute,
    .finish_direct = rxFinishDirect,
    .finish_stash = rxFinishStash,
    .drop_stash = rxDropStash,
    .abandoned = rxAbandoned,
};

pub fn of(rx: *const link_kind.Receiver) *Net {
    return @ptrCast(@alignCast(rx.context));
}

pub fn rxFrame(rx: *const link_kind.Receiver, header: *const wire.FrameHeader, payload: []const u8) void {
    const net = of(rx);
    switch (net.route(rx, header, true)) {
        .direct => |d| {
            const req: *Req = @ptrCast(@alignCast(d.request));
            req.deliver(header.offset, payload);
            rxFinishDirect(rx, d, d.dest.len, true);
        },
        .stash => |buf| {
            @memcpy(buf, payload);
            rxFinishStash(rx, header, buf);
        },
        .discard => {},
    }
}

pub fn rxRoute(rx: *const link_kind.Receiver, header: *const wire.FrameHeader) link_kind.Target {
    return of(rx).route(rx, header, false);
}

pub fn rxAbandoned(rx: *const link_kind.Receiver, direct: link_kind.Direct) bool {
    _ = rx;
    const ep: *Endpoint = @ptrCast(@alignCast(direct.endpoint));
    return ep.abandoned.load(.acquire);
}

/// Where one frame's payload goes. Waits while the stash is full (backpressure).
/// `in_memory`: the kind hands the payload over in memory, so a reducing receive can take
/// it directly; streamed payloads for reducing receives go through the stash.
pub fn route(net: *Net, rx: *const link_kind.Receiver, header: *const wire.FrameHeader, in_memory: bool) link_kind.Target {
    net.mu.lock();
    defer net.mu.unlock();
    var waits: u64 = 0;
    var waiting_since_ns: u64 = 0;
    while (true) : (waits += 1) {
        if (rx.stopped()) return .discard;
        const registered = net.findEndpointLocked(header.op_id) != null;
        if (!registered and waits > 0 and sys.monotonicNs() -| waiting_since_ns > orphan_ttl_ns) {
            // A frame of an op this rank never runs must not block the link forever.
            sys.logLine("rank {d}: dropping frames of op {d} from rank {d}: the op was not posted here for {d} s", .{ net.rank(), header.op_id, rx.peer, orphan_ttl_ns / std.time.ns_per_s });
            net.markFinishedLocked(header.op_id);
            return .discard;
        }
        if (waits == 0) waiting_since_ns = sys.monotonicNs();
        if (net.findEndpointLocked(header.op_id)) |ep| {
            if (ep.abandoned.load(.acquire)) return .discard;
            if (findRecvLocked(ep, rx.peer, header.seq)) |req| routed: {
                if (req.reduce != null and !in_memory) break :routed; // via the stash (TCP reads in place)
                if (!fits(req, header.msg_len, header.chunk_len)) {
                    failLocked(ep, error.Protocol, @intCast(rx.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ rx.peer, header.seq, header.msg_len, req.buf.len });
                    return .discard;
                }
                req.routed += header.chunk_len;
                req.busy += 1;
                return .{ .direct = .{ .endpoint = ep, .request = req, .dest = req.buf[header.offset..][0..header.chunk_len] } };
            }
        } else if (net.finishedLocked(header.op_id)) {
            return .discard;
        }
        if (net.stashReserveLocked(header.chunk_len)) |buf| return .{ .stash = buf };
        if (net.evictOrphansLocked() > 0) continue;
        if (!net.stash_full_logged) {
            net.stash_full_logged = true;
            sys.logLine("rank {d}: stash full ({d} bytes, {d} entries): link from rank {d} waits for op {d} to be posted", .{ net.rank(), net.stash_bytes, net.stash.items.len, rx.peer, header.op_id });
        }
        net.stash_cond.timedWait(&net.mu, stash_wait_ns) catch {};
    }
}

/// A stash buffer of `len` bytes when the stash has room, else null.
pub fn stashReserveLocked(net: *Net, len: u32) ?[]u8 {
    if (net.stash.items.len + net.stash_pending >= stash_entries_max) return null;
    if (net.stash_bytes + len > net.opts.stash_bytes_max) return null;
    const buf = net.alloc.alloc(u8, len) catch return null;
    net.stash_pending += 1;
    net.stash_bytes += buf.len;
    net.stash_full_logged = false;
    return buf;
}

pub fn rxFinishDirect(rx: *const link_kind.Receiver, direct: link_kind.Direct, written: usize, complete: bool) void {
    const net = of(rx);
    const ep: *Endpoint = @ptrCast(@alignCast(direct.endpoint));
    const req: *Req = @ptrCast(@alignCast(direct.request));
    net.mu.lock();
    defer net.mu.unlock();
    net.countRxLocked(rx.peer, written);
    std.debug.assert(req.busy > 0);
    req.busy -= 1;
    if (complete) {
        req.received += written;
        req.arrived = true;
        checkDoneLocked(ep, req);
    }
    ep.cond.broadcast();
}

pub fn rxDropStash(rx: *const link_kind.Receiver, buf: []u8) void {
    const net = of(rx);
    net.mu.lock();
    defer net.mu.unlock();
    std.debug.assert(net.stash_pending > 0);
    net.stash_pending -= 1;
    net.stash_bytes -= buf.len;
    net.alloc.free(buf);
    net.stash_cond.broadcast();
}

/// Received bytes count under the kind of the peer's live link (one per peer in practice).
pub fn countRxLocked(net: *Net, peer: u32, bytes: usize) void {
    const kind: u8 = for (net.links.peers[peer].links) |maybe| {
        if (maybe) |link| break link.kind;
    } else kinds.base_index;
    net.traffic.addRx(peer, kind, bytes);
}

pub fn rxFinishStash(rx: *const link_kind.Receiver, header: *const wire.FrameHeader, buf: []u8) void {
    const net = of(rx);
    net.mu.lock();
    defer net.mu.unlock();
    net.countRxLocked(rx.peer, buf.len);
    std.debug.assert(net.stash_pending > 0);
    net.stash_pending -= 1;
    // The receive may have been posted while we copied: hand the chunk over now.
    if (net.findEndpointLocked(header.op_id)) |ep| {
        if (!ep.abandoned.load(.acquire)) {
            if (findRecvLocked(ep, rx.peer, header.seq)) |req| {
                net.stash_bytes -= buf.len;
                net.stash_cond.broadcast();
                defer net.alloc.free(buf);
                if (!fits(req, header.msg_len, buf.len)) {
                    failLocked(ep, error.Protocol, @intCast(rx.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ rx.peer, header.seq, header.msg_len, req.buf.len });
                    return;
                }
                req.routed += buf.len;
                req.deliver(header.offset, buf);
                req.received += buf.len;
                req.arrived = true;
                checkDoneLocked(ep, req);
                return;
            }
        }
    } else if (net.finishedLocked(header.op_id)) {
        net.stash_bytes -= buf.len;
        net.alloc.free(buf);
        net.stash_cond.broadcast();
        return;
    }
    net.stash.appendAssumeCapacity(.{
        .op_id = header.op_id,
        .src = rx.peer,
        .seq = header.seq,
        .msg_len = header.msg_len,
        .offset = header.offset,
        .data = buf,
        .born_ns = sys.monotonicNs(),
    });
}

pub fn dropStashLocked(net: *Net, index: usize) void {
    const entry = net.stash.swapRemove(index);
    net.stash_bytes -= entry.data.len;
    net.alloc.free(entry.data);
}

/// Drops stashed frames of ops this rank has not registered for orphan_ttl_ns.
pub fn evictOrphansLocked(net: *Net) u32 {
    const now = sys.monotonicNs();
    var evicted: u32 = 0;
    var i: usize = 0;
    while (i < net.stash.items.len) {
        const entry = net.stash.items[i];
        if (now -| entry.born_ns > orphan_ttl_ns and net.findEndpointLocked(entry.op_id) == null) {
            net.dropStashLocked(i);
            evicted += 1;
        } else i += 1;
    }
    if (evicted > 0) sys.logLine("rank {d}: dropped {d} stashed frame(s) of ops never posted here", .{ net.rank(), evicted });
    return evicted;
}

/// A link to `peer` died (links.zig): the first pending receive from it in each op fails.
pub fn linkLostLocked(context: *anyopaque, peer: u32, outcome: link_kind.RxOutcome) void {
    const net: *Net = @ptrCast(@alignCast(context));
    for (net.endpoints) |maybe| {
        const ep = maybe orelse continue;
        var used = ep.reqs_used;
        while (used != 0) : (used &= used - 1) {
            const req = &ep.reqs[@ctz(used)];
            if (req.kind != .recv or req.peer != peer or req.done.load(.monotonic)) continue;
            if (outcome == .protocol) {
                failLocked(ep, error.Protocol, @intCast(peer), "rank {d} sent a bad frame", .{peer});
            } else {
                failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} closed its link (message {d}: {d} of {d} bytes arrived)", .{ peer, req.seq, req.received, req.buf.len });
            }
            break;
        }
    }
}
