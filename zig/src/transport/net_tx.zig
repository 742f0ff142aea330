//! The send side of net.zig (moved from it): the transport.Comm table the algorithms call
//! (isend, irecv, irecv_reduce, wait) and sending a message over the peer's link. Free
//! functions over *Net / *Endpoint; Net keeps aliases for the ones called as methods.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const transport = @import("transport.zig");
const links_mod = @import("links.zig");
const net_mod = @import("net.zig");
const Net = net_mod.Net;
const Endpoint = net_mod.Endpoint;
const Req = net_mod.Req;
const Error = net_mod.Error;

pub const comm_vtable = transport.Comm.VTable{ .isend = commIsend, .irecv = commIrecv, .wait = commWait, .irecv_reduce = commIrecvReduce };

fn commIrecvReduce(context: *anyopaque, peer_group: u32, bytes: []u8, spec: transport.ReduceSpec) Error!transport.Request {
    return commIrecvImpl(context, peer_group, bytes, spec);
}

fn commIsend(context: *anyopaque, peer_group: u32, bytes: []const u8) Error!transport.Request {
    const ep: *Endpoint = @ptrCast(@alignCast(context));
    const net = ep.net;
    std.debug.assert(peer_group < ep.group_size and peer_group != ep.group_rank);
    const peer = ep.group[peer_group];
    const index, const seq = blk: {
        net.mu.lock();
        defer net.mu.unlock();
        const index, const seq = try claimRequestLocked(ep, &ep.send_seq[peer_group]);
        ep.reqs[index] = .{ .kind = .send, .peer = peer, .seq = seq };
        break :blk .{ index, seq };
    };
    sendMessage(net, ep, peer, seq, bytes) catch |err| {
        net.mu.lock();
        defer net.mu.unlock();
        Net.freeReqLocked(ep, index);
        return err;
    };
    ep.reqs[index].done.store(true, .release);
    return .{ .index = index };
}

/// A free request of `ep` and the next sequence number of `seq_next` (the peer's send or receive
/// counter), which it advances; net.mu held. Fails when the op already failed or has
/// requests_max requests in flight.
fn claimRequestLocked(ep: *Endpoint, seq_next: *u32) Error!struct { u32, u32 } {
    if (ep.failure) |f| return f.err;
    const index = Net.allocReqLocked(ep) orelse {
        Net.failLocked(ep, error.OutOfMemory, -1, "more than {d} requests in flight", .{net_mod.requests_max});
        return error.OutOfMemory;
    };
    const seq = seq_next.*;
    seq_next.* += 1;
    return .{ index, seq };
}

fn commIrecv(context: *anyopaque, peer_group: u32, bytes: []u8) Error!transport.Request {
    return commIrecvImpl(context, peer_group, bytes, null);
}

fn commIrecvImpl(context: *anyopaque, peer_group: u32, bytes: []u8, reduce_spec: ?transport.ReduceSpec) Error!transport.Request {
    const ep: *Endpoint = @ptrCast(@alignCast(context));
    const net = ep.net;
    std.debug.assert(peer_group < ep.group_size and peer_group != ep.group_rank);
    const peer = ep.group[peer_group];
    net.mu.lock();
    defer net.mu.unlock();
    const index, const seq = try claimRequestLocked(ep, &ep.recv_seq[peer_group]);
    const req = &ep.reqs[index];
    req.* = .{ .kind = .recv, .peer = peer, .seq = seq, .buf = bytes, .reduce = reduce_spec };
    net.claimStashLocked(ep, req);
    Net.checkDoneLocked(ep, req);
    // A peer that is gone can't send the rest (what it sent before leaving was stashed).
    if (!req.done.load(.acquire)) {
        const p = &net.links.peers[peer];
        if (p.down) {
            Net.failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} was marked down", .{peer});
        } else if (p.lost and p.lost_protocol) {
            Net.failLocked(ep, error.Protocol, @intCast(peer), "rank {d} sent a bad frame", .{peer});
        } else if (p.lost) {
            Net.failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} closed its link", .{peer});
        }
    }
    return .{ .index = index };
}

const SpinReq = struct {
    ep: *Endpoint,
    req: *Req,
    fn ready(self: SpinReq) bool {
        return self.req.done.load(.acquire) or self.ep.failed.load(.acquire);
    }
};

fn commWait(context: *anyopaque, request: transport.Request) Error!void {
    const ep: *Endpoint = @ptrCast(@alignCast(context));
    const net = ep.net;
    std.debug.assert(request.index < net_mod.requests_max);
    std.debug.assert(ep.reqs_used & (@as(u64, 1) << @intCast(request.index)) != 0);
    const req = &ep.reqs[request.index];
    // Spin briefly: a small message usually lands within microseconds.
    _ = sys.spinUntil(SpinReq{ .ep = ep, .req = req }, SpinReq.ready);
    net.mu.lock();
    defer net.mu.unlock();
    var wakeups: u64 = 0;
    while (true) : (wakeups += 1) {
        if (req.done.load(.acquire)) {
            Net.freeReqLocked(ep, request.index);
            return;
        }
        if (ep.failure) |f| return f.err;
        if (ep.canceled.load(.acquire)) {
            Net.failLocked(ep, error.Canceled, -1, "canceled", .{});
            continue;
        }
        if (net.links.stopping.load(.acquire)) {
            Net.failLocked(ep, error.Canceled, -1, "engine shutting down", .{});
            continue;
        }
        const now = sys.monotonicNs();
        if (now >= ep.deadline_ns) {
            Net.failLocked(ep, error.Timeout, @intCast(req.peer), "timed out after {d} ms waiting for message {d} ({d} bytes, {d} arrived) from rank {d}", .{ ep.timeout_ms, req.seq, req.buf.len, req.received, req.peer });
            continue;
        }
        ep.cond.timedWait(&net.mu, ep.deadline_ns - now) catch {};
    }
}

// ---- sending ----

fn sendMessage(net: *Net, ep: *Endpoint, peer: u32, seq: u32, bytes: []const u8) Error!void {
    const link = try acquireLink(net, ep, peer);
    defer net.links.release(link);
    const template = wire.FrameHeader{ .src_rank = @intCast(net.rank()), .op_id = ep.op_id, .seq = seq, .chunk_len = 0, .msg_len = bytes.len, .offset = 0 };
    const zero_copy = net.links.sendRendezvous(link, template, bytes, ep.abort()) catch |err|
        return sendFailed(net, ep, link.peer, seq, err);
    if (zero_copy) {
        net.traffic.addTx(link.peer, link.kind, bytes.len);
        return;
    }
    const chunk_max: u64 = link.chunkBytes();
    var offset: u64 = 0;
    var chunks_max: u64 = bytes.len / chunk_max + 1;
    while (chunks_max > 0) : (chunks_max -= 1) {
        if (net.stopReason(ep, peer, "sending to")) |err| return err;
        const chunk_len: u32 = @intCast(@min(chunk_max, bytes.len - offset));
        var header = wire.FrameHeader{
            .src_rank = @intCast(net.rank()),
            .op_id = ep.op_id,
            .seq = seq,
            .chunk_len = chunk_len,
            .msg_len = bytes.len,
            .offset = offset,
        };
        header.seal();
        net.links.send(link, &header, bytes[offset..][0..chunk_len], ep.abort()) catch |err|
            return sendFailed(net, ep, link.peer, seq, err);
        net.traffic.addTx(link.peer, link.kind, chunk_len);
        offset += chunk_len;
        if (offset == bytes.len) return;
    }
    unreachable;
}

/// The op's failure after links.send gave up on message `seq` to `peer`.
fn sendFailed(net: *Net, ep: *Endpoint, peer: u32, seq: u32, err: links_mod.SendFailure) Error {
    net.mu.lock();
    defer net.mu.unlock();
    switch (err) {
        error.PeerClosed => Net.failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} closed its link while we sent message {d}", .{ peer, seq }),
        error.LinkClosed => Net.failLocked(ep, error.PeerFailed, @intCast(peer), "link to rank {d} closed while we sent message {d}", .{ peer, seq }),
        error.Broken, error.Aborted => if (ep.failure == null) {
            if (ep.canceled.load(.acquire)) {
                Net.failLocked(ep, error.Canceled, -1, "canceled", .{});
            } else if (net.links.stopping.load(.acquire)) {
                Net.failLocked(ep, error.Canceled, -1, "engine shutting down", .{});
            } else {
                Net.failLocked(ep, error.Timeout, @intCast(peer), "timed out after {d} ms sending to rank {d} (it stopped reading)", .{ ep.timeout_ms, peer });
            }
        },
    }
    return ep.failure.?.err;
}

/// A live link to `peer` (dialing it when there is none), with a reference held.
fn acquireLink(net: *Net, ep: *Endpoint, peer_rank: u32) Error!*links_mod.Link {
    const why = switch (net.links.acquire(peer_rank, ep.deadline_ns, ep.abort())) {
        .link => |link| return link,
        .failed => |why| why,
    };
    if (why == .stop) return net.stopReason(ep, peer_rank, "connecting to") orelse error.Canceled;
    net.mu.lock();
    defer net.mu.unlock();
    switch (why) {
        .stop => unreachable,
        .down => Net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was marked down", .{peer_rank}),
        .no_address => Net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} has no data-plane address", .{peer_rank}),
        .dial => |d| Net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "could not connect to rank {d} at {any}: {s}", .{ peer_rank, d.addr, switch (d.err) {
            error.Refused => "connection refused",
            error.TimedOut => "timed out",
            error.Rejected => "handshake rejected (cluster id / token / rank mismatch?)",
            error.Dropped => "it dropped the connection before the handshake (flooded or shutting down)",
            error.Protocol => "bad handshake reply",
            else => "unreachable",
        } }),
        .reset => Net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was reset while connecting", .{peer_rank}),
        .no_thread => Net.failLocked(ep, error.OutOfMemory, -1, "could not start a link thread", .{}),
    }
    return ep.failure.?.err;
}
