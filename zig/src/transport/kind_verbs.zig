//! The verbs link kind (RDMA): one RC queue pair per link, frames RDMA-written with immediate
//! into the peer's registered ring, credits RDMA-written back (verbs.zig has the mechanics).
//! The blob is verbs.Blob (QP number, GID / LID, ring and credit addresses and rkeys).
//! The socket stays for liveness, as for shm: a dead peer's socket hangs up; a dead peer's QP
//! also errors (retry exceeded) and the channel's reason is logged naming the peer.
//!
//! Used between hosts when libibverbs (or $MOONRING_VERBS_LIB) has an active port; for every
//! peer when MOONRING_TRANSPORT=verbs (tests on one host). Not usable: said once in the log
//! (`start` returns null) and the other kinds carry every link.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const link_kind = @import("link_kind.zig");
const verbs = @import("verbs.zig");

pub const ops = link_kind.Ops{
    .name = "verbs",
    .id = @intFromEnum(wire.LinkKind.verbs),
    .start = start,
    .stop = stop,
    .preference = preference,
    .offer = offer,
    .accept = accept,
    .complete = complete,
    .chunk_bytes = chunkBytes,
    .send = send,
    .receive = receive,
    .wake = wake,
    .destroy = destroy,
    .rendezvous = &rendezvous,
};

/// Messages of at least this many slots go zero-copy (the peer RDMA-reads them); smaller
/// ones go through the rings, where one copy costs less than the extra round trip.
const rendezvous_slots_min: u64 = 4;

const rendezvous = link_kind.Rendezvous{
    .min_bytes = rendezvousMinBytes,
    .expose = expose,
    .await_taken = awaitTaken,
    .withdraw = withdraw,
};

const rx_idle_wait_ns: u64 = 100 * std.time.ns_per_ms;
const send_space_wait_ns: u64 = 1 * std.time.ns_per_ms;
/// Between hosts: above tcp. Forced (MOONRING_TRANSPORT=verbs): above shm too.
const preference_other_host: u8 = 2;
const preference_forced: u8 = 4;

comptime {
    std.debug.assert(@sizeOf(verbs.Blob) <= wire.link_blob_bytes_max);
    std.debug.assert(preference_other_host > link_kind.preference_base);
}

/// What this rank's verbs kind is: the device in use, or why there is none (for /cluster).
pub const Status = struct {
    usable: bool = false,
    text_len: usize = 0,
    text: [256]u8 = undefined,

    pub fn message(self: *const Status) []const u8 {
        return self.text[0..self.text_len];
    }
};

/// The last rank started in this process (one per process in production).
pub var status: Status = .{};
var status_mu: std.Thread.Mutex = .{};

fn setStatus(usable: bool, comptime fmt: []const u8, args: anytype) void {
    status_mu.lock();
    defer status_mu.unlock();
    status.usable = usable;
    status.text_len = (std.fmt.bufPrint(&status.text, fmt, args) catch status.text[0..]).len;
}

pub fn statusCopy() Status {
    status_mu.lock();
    defer status_mu.unlock();
    return status;
}

/// Bytes received by rendezvous in this process: straight into the posted receive (zero
/// copy), or through the bounce area into the stash (the receive was not posted yet or
/// reduces). GET /cluster shows them; tests check the zero-copy path ran.
pub var rendezvous_direct_bytes = std.atomic.Value(u64).init(0);
pub var rendezvous_staged_bytes = std.atomic.Value(u64).init(0);

const Context = struct {
    alloc: std.mem.Allocator,
    rank: u32,
    device: *verbs.Device,
    /// Further NICs that links stripe large messages over (verbs_rail.zig).
    rail_devices: [verbs.rails_max]*verbs.Device = undefined,
    rail_count: u32 = 0,

    fn rails(ctx: *const Context) []const *verbs.Device {
        return ctx.rail_devices[0..ctx.rail_count];
    }
};

fn context(kind: *anyopaque) *Context {
    return @ptrCast(@alignCast(kind));
}

fn channelOf(link: *anyopaque) *verbs.Channel {
    return @ptrCast(@alignCast(link));
}

fn start(env: *const link_kind.Env) ?*anyopaque {
    if (env.forced) |forced| if (!std.mem.eql(u8, forced, "verbs")) {
        setStatus(false, "not used: MOONRING_TRANSPORT={s}", .{forced});
        return null;
    };
    var config = verbs.Config.fromEnv();
    // The shm ring geometry is the project's one setting for ring slots.
    config.slot_count = @min(env.shm_slot_count, verbs.slot_count_max);
    config.slot_bytes = @min(env.shm_slot_bytes, wire.chunk_bytes_max);
    var why: verbs.Reason = .{};
    const device = verbs.Device.open(config, &why) catch {
        const then = if (env.isForced("verbs")) "MOONRING_TRANSPORT=verbs falls back to the other transports" else "links to other hosts use tcp";
        sys.logLine("rank {d}: RDMA verbs not available ({s}); {s}", .{ env.rank, why.message(), then });
        setStatus(false, "unavailable: {s}", .{why.message()});
        return null;
    };
    const ctx = env.alloc.create(Context) catch {
        device.close();
        return null;
    };
    ctx.* = .{ .alloc = env.alloc, .rank = env.rank, .device = device };
    openRails(ctx, config);
    const ll: []const u8 = if (device.link_layer == 2) "RoCE" else "InfiniBand";
    var names_buf: [128]u8 = undefined;
    const names = railNames(ctx, &names_buf);
    sys.logLine("rank {d}: RDMA verbs on {s} port {d} ({s}, GID index {d}){s}", .{ env.rank, device.name(), device.port, ll, device.gid_index, names });
    setStatus(true, "{s} port {d} ({s}, GID index {d}){s}", .{ device.name(), device.port, ll, device.gid_index, names });
    return ctx;
}

/// Every further active device MOONRING_IB_HCA admits becomes a rail (up to rails_max).
fn openRails(ctx: *Context, config: verbs.Config) void {
    var rail_config = config;
    while (ctx.rail_count < verbs.rails_max) {
        rail_config.device_skip = @intCast(ctx.rail_count + 1);
        var why: verbs.Reason = .{};
        const rail = verbs.Device.open(rail_config, &why) catch return;
        if (rail.link_layer != ctx.device.link_layer) {
            sys.logLine("rank {d}: verbs device {s} not striped over (another link layer)", .{ ctx.rank, rail.name() });
            rail.close();
            return;
        }
        ctx.rail_devices[ctx.rail_count] = rail;
        ctx.rail_count += 1;
    }
}

fn railNames(ctx: *const Context, buf: []u8) []const u8 {
    if (ctx.rail_count == 0) return "";
    var stream = std.io.fixedBufferStream(buf);
    stream.writer().writeAll(", striping over") catch return "";
    for (ctx.rails()) |d| stream.writer().print(" {s}", .{d.name()}) catch break;
    return stream.getWritten();
}

fn stop(kind: *anyopaque) void {
    const ctx = context(kind);
    for (ctx.rails()) |d| d.close();
    ctx.device.close();
    ctx.alloc.destroy(ctx);
}

fn preference(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo) u8 {
    _ = kind;
    if (env.isForced("verbs")) return preference_forced;
    const other_host = peer.host_id != 0 and peer.host_id != env.host_id;
    return if (other_host) preference_other_host else 0;
}

fn createChannel(ctx: *Context, peer: u32) ?*verbs.Channel {
    var why: verbs.Reason = .{};
    const channel = verbs.Channel.create(ctx.device, peer, &why) catch {
        sys.logLine("rank {d}: verbs link to rank {d} not made ({s}); using tcp", .{ ctx.rank, peer, why.message() });
        return null;
    };
    channel.addRails(ctx.rails(), &why) catch {
        sys.logLine("rank {d}: verbs link to rank {d} not striped ({s})", .{ ctx.rank, peer, why.message() });
    };
    return channel;
}

/// The blob: verbs.Blob, then the rails' tail (a peer without rails sends none).
fn writeBlob(channel: *const verbs.Channel, blob_out: []u8) usize {
    const blob = channel.blob();
    @memcpy(blob_out[0..@sizeOf(verbs.Blob)], std.mem.asBytes(&blob));
    if (channel.rail_made == 0) return @sizeOf(verbs.Blob);
    const tail = channel.railTail();
    @memcpy(blob_out[@sizeOf(verbs.Blob)..][0..@sizeOf(verbs.RailTail)], std.mem.asBytes(&tail));
    return @sizeOf(verbs.Blob) + @sizeOf(verbs.RailTail);
}

fn readBlob(blob_in: []const u8) ?verbs.Blob {
    if (blob_in.len != @sizeOf(verbs.Blob) and blob_in.len != @sizeOf(verbs.Blob) + @sizeOf(verbs.RailTail)) return null;
    const blob = std.mem.bytesToValue(verbs.Blob, blob_in[0..@sizeOf(verbs.Blob)]);
    return if (blob.valid()) blob else null;
}

/// The peer's rails (none when it sent no tail); null: a malformed tail.
fn readTail(blob_in: []const u8) ?verbs.RailTail {
    if (blob_in.len == @sizeOf(verbs.Blob)) return .{ .count = 0, .rails = undefined };
    const tail = std.mem.bytesToValue(verbs.RailTail, blob_in[@sizeOf(verbs.Blob)..][0..@sizeOf(verbs.RailTail)]);
    return if (tail.valid()) tail else null;
}

/// Both sides connect min(theirs, ours) rails; a failure there is the link's failure.
fn connectAll(channel: *verbs.Channel, remote: verbs.Blob, blob_in: []const u8, why: *verbs.Reason) error{NoDevice}!void {
    try channel.connect(remote, why);
    const tail = readTail(blob_in) orelse {
        why.set("rank {d} sent a bad rail list", .{channel.peer});
        return error.NoDevice;
    };
    try channel.connectRails(tail, why);
}

fn offer(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_out: []u8) ?link_kind.Pending {
    _ = env;
    const channel = createChannel(context(kind), peer.rank) orelse return null;
    return .{ .link = channel, .blob_len = writeBlob(channel, blob_out) };
}

fn accept(kind: *anyopaque, env: *const link_kind.Env, peer: link_kind.PeerInfo, blob_in: []const u8, blob_out: []u8) ?link_kind.Pending {
    _ = env;
    const ctx = context(kind);
    const remote = readBlob(blob_in) orelse return null;
    const channel = createChannel(ctx, peer.rank) orelse return null;
    var why: verbs.Reason = .{};
    connectAll(channel, remote, blob_in, &why) catch {
        sys.logLine("rank {d}: verbs link from rank {d} declined ({s}); using tcp", .{ ctx.rank, peer.rank, why.message() });
        channel.destroy();
        return null;
    };
    channel.wait_ready = true;
    return .{ .link = channel, .blob_len = writeBlob(channel, blob_out) };
}

fn complete(kind: *anyopaque, link: *anyopaque, peer: link_kind.PeerInfo, blob_in: []const u8) link_kind.CompleteError!void {
    const channel = channelOf(link);
    const remote = readBlob(blob_in) orelse return error.Protocol;
    var why: verbs.Reason = .{};
    connectAll(channel, remote, blob_in, &why) catch {
        sys.logLine("rank {d}: verbs link to rank {d} failed ({s})", .{ context(kind).rank, peer.rank, why.message() });
        return error.Protocol;
    };
    if (!channel.markPeerReady()) return error.Protocol;
}

fn chunkBytes(link: *anyopaque) u32 {
    return channelOf(link).slot_bytes;
}

fn send(link: *anyopaque, fd: sys.Fd, header: *const wire.FrameHeader, payload: []const u8, abort: link_kind.Abort) link_kind.SendError!void {
    _ = fd;
    const channel = channelOf(link);
    std.debug.assert(payload.len <= channel.slot_bytes);
    const index = while (true) {
        if (channel.isFailed()) return error.Closed;
        if (channel.tryReserve()) |index| break index;
        if (abort.check()) return error.Aborted; // nothing of the frame was written
        channel.waitSpace(send_space_wait_ns);
    };
    channel.txHeader(index).* = header.*;
    @memcpy(channel.txPayload(index)[0..payload.len], payload);
    if (!channel.publish(index)) return error.Closed;
}

fn receive(link: *anyopaque, fd: sys.Fd, rx: *const link_kind.Receiver) link_kind.RxOutcome {
    const channel = channelOf(link);
    var frames: u64 = 0;
    while (true) : (frames += 1) {
        if (rx.stopped()) return .closed;
        const index = channel.peek() orelse {
            if (channel.isFailed()) return lost(channel);
            channel.waitData(rx_idle_wait_ns);
            if (channel.peek() == null and sys.peerHungUp(fd)) return .closed;
            continue;
        };
        // A copy: the peer's NIC could write the slot again only after we release it, but the
        // header is validated once and used after.
        const header = channel.rxHeader(index).*;
        header.validate(rx.peer, channel.slot_bytes) catch return .protocol;
        if (header.flags == wire.flag_rendezvous) {
            const desc = descOf(channel.rxPayload(index)[0..header.chunk_len]) orelse return .protocol;
            if (desc.len != header.msg_len) return .protocol;
            if (!channel.release(index)) return lost(channel);
            if (!take(channel, rx, header, desc)) return if (rx.stopped()) .closed else lost(channel);
            continue;
        }
        rx.frame(&header, channel.rxPayload(index)[0..header.chunk_len]);
        if (!channel.release(index)) return lost(channel);
    }
}

fn rendezvousMinBytes(link: *anyopaque) u64 {
    return rendezvous_slots_min * channelOf(link).slot_bytes;
}

fn expose(link: *anyopaque, bytes: []const u8, desc_out: []u8) ?usize {
    const desc = channelOf(link).expose(bytes) orelse return null;
    @memcpy(desc_out[0..@sizeOf(verbs.Desc)], std.mem.asBytes(&desc));
    return @sizeOf(verbs.Desc);
}

fn descOf(bytes: []const u8) ?verbs.Desc {
    if (bytes.len != @sizeOf(verbs.Desc)) return null;
    const desc = std.mem.bytesToValue(verbs.Desc, bytes[0..@sizeOf(verbs.Desc)]);
    return if (desc.slot < verbs.rendezvous_slots and desc.len > 0) desc else null;
}

fn awaitTaken(link: *anyopaque, desc_bytes: []const u8, abort: link_kind.Abort) link_kind.SendError!void {
    const channel = channelOf(link);
    const desc = descOf(desc_bytes).?;
    const outcome = channel.awaitTaken(desc, abort);
    // Released only once taken: a peer still reading must find the region registered. An op
    // that gives up leaves the link usable (the peer is alive, its op fails on its own): the
    // exposure stays until the peer's taken word arrives (or the channel goes).
    switch (outcome) {
        .taken => channel.unexposeSlot(desc),
        .failed => return error.Closed,
        .aborted => {
            channel.abandonSlot(desc);
            return error.Aborted;
        },
    }
}

fn withdraw(link: *anyopaque, desc_bytes: []const u8) void {
    channelOf(link).unexposeSlot(descOf(desc_bytes).?);
}

/// The receiving side of a rendezvous: the message is read from the sender's memory piece by
/// piece, each piece routed like a streamed frame (into the posted receive: zero-copy; else a
/// stash buffer through the bounce area), then the sender is told it may reuse its buffer.
fn take(channel: *verbs.Channel, rx: *const link_kind.Receiver, header: wire.FrameHeader, desc: verbs.Desc) bool {
    var offset: u64 = 0;
    // Stash-sized pieces until a piece lands in the posted receive: then the rest can too.
    var piece_max: u64 = channel.slot_bytes;
    var pieces_max: u64 = desc.len / channel.slot_bytes + 2;
    while (offset < desc.len and pieces_max > 0) : (pieces_max -= 1) {
        if (rx.stopped()) return false;
        const len = @min(piece_max, desc.len - offset);
        var h = wire.FrameHeader{ .src_rank = header.src_rank, .op_id = header.op_id, .seq = header.seq, .chunk_len = @intCast(len), .msg_len = desc.len, .offset = offset };
        h.seal();
        switch (rx.route(&h)) {
            .direct => |d| {
                const ok = !rx.abandoned(d) and channel.pullStriped(d.dest, desc, offset);
                if (ok) _ = rendezvous_direct_bytes.fetchAdd(len, .monotonic);
                rx.finishDirect(d, if (ok) d.dest.len else 0, ok);
                if (!ok and channel.isFailed()) return false;
                piece_max = verbs.pull_bytes_max;
            },
            .stash => |buf| {
                // With several NICs a stash piece is striped too (registered per use on each).
                const pulled = if (channel.rail_count > 0) channel.pullStriped(buf, desc, offset) else channel.pullStaged(buf, desc.addr + offset, desc.rkey);
                if (!pulled) {
                    rx.dropStash(buf);
                    return false;
                }
                _ = rendezvous_staged_bytes.fetchAdd(len, .monotonic);
                rx.finishStash(&h, buf);
            },
            .discard => {},
        }
        offset += len;
    }
    std.debug.assert(offset == desc.len);
    return channel.markTaken(desc);
}

fn lost(channel: *verbs.Channel) link_kind.RxOutcome {
    sys.logLine("verbs link to rank {d} failed: {s}", .{ channel.peer, channel.reason.message() });
    return .closed;
}

fn wake(link: *anyopaque) void {
    channelOf(link).wakeAll();
}

fn destroy(kind: *anyopaque, link: *anyopaque) void {
    _ = kind;
    channelOf(link).destroy();
}
