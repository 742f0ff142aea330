//! The link layer: one rank's peers and the links to them. Owns the listener, dials and
//! accepts connections, runs the handshake (wire.zig / tcp.zig), picks each link's kind through
//! the table in link_kind.zig, keeps links alive and notices their death. It knows nothing of
//! ops: received frames go to the endpoint layer (net.zig) through a link_kind.Receiver, and a
//! lost peer is reported through `Sink.link_lost_locked`.
//!
//! Threads: a listener thread; one thread per accepted connection that runs its handshake and
//! then its receive loop; one receive thread per dialed link. Senders are op threads holding a
//! link reference (acquire / release). One lock (`mu`, the data plane's, shared with net.zig)
//! guards peers, link tables and counters; functions named *Locked expect it held.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const tcp = @import("tcp.zig");
const link_kind = @import("link_kind.zig");
const kinds = @import("kinds.zig");
const op = @import("../op.zig");
const log_limit = @import("../log_limit.zig");

pub const world_size_max = op.world_size_max;
/// Established links one rank keeps at once (of every kind): one each way to every peer of the
/// largest world. A bound, not a table: a flood of connections is bounded by handshakes_max.
pub const links_max = 2 * world_size_max;
pub const links_per_peer_max = 4;
/// Accepted connections not yet authenticated, at most: a flood of idle or slow connections
/// can't hold more, and when full the oldest goes, so a real peer (which sends its Hello at
/// once) always gets in (issue 18: 300 idle connections filled every slot and kept rank 1 out).
pub const handshakes_max = 128;
/// Of them from one source address: a noisy host evicts its own oldest first.
pub const handshakes_per_source_max = 32;
const connect_timeout_ms_max: u32 = 5000;
/// A dialer whose connection was dropped unanswered tries again after this, doubling.
const redial_wait_ms_min: u32 = 5;
const redial_wait_ms_max: u32 = 200;
const thread_stack_bytes = 256 * 1024;

comptime {
    std.debug.assert(links_per_peer_max * 2 <= links_max);
    std.debug.assert(handshakes_per_source_max <= handshakes_max);
}

/// An accepted connection in its handshake (Links.handshakes).
const Handshake = struct {
    fd: sys.Fd,
    addr: sys.Address,
    source: u128,
    ticket: u64,
};

/// The source address of a connection, without its port.
fn sourceKey(addr: sys.Address) u128 {
    return switch (addr.any.family) {
        std.posix.AF.INET => addr.in.sa.addr,
        std.posix.AF.INET6 => std.mem.readInt(u128, &addr.in6.sa.addr, .big),
        else => 0,
    };
}

pub const Link = struct {
    links: *Links,
    fd: sys.Fd,
    peer: u32,
    /// Index in kinds.all.
    kind: u8,
    /// The kind's per-link state.
    state: *anyopaque,
    generation: u32 = 0,
    /// Holders: the link's receive thread and senders (under mu).
    refs: u32 = 0,
    closing: std.atomic.Value(bool) = .init(false),
    closed_by_us: bool = false,
    /// Serializes senders: a kind's send never overlaps itself on one link.
    write_mu: std.Thread.Mutex = .{},

    pub fn ops(link: *const Link) *const link_kind.Ops {
        return kinds.all[link.kind];
    }

    /// The largest payload one frame on this link carries.
    pub fn chunkBytes(link: *const Link) u32 {
        const bytes = link.ops().chunk_bytes(link.state);
        std.debug.assert(bytes > 0 and bytes <= wire.chunk_bytes_max);
        return bytes;
    }
};

pub const Peer = struct {
    addr: ?sys.Address = null,
    host_id: u64 = 0,
    /// mr_engine_peer_down(): sticky until setPeer().
    down: bool = false,
    /// A link to it closed and no other is up: receives from it fail at once.
    lost: bool = false,
    /// Why: it sent a bad frame (else it closed the link).
    lost_protocol: bool = false,
    dialing: bool = false,
    generation: u32 = 0,
    links: [links_per_peer_max]?*Link = [_]?*Link{null} ** links_per_peer_max,

    /// Usable for a new op: known, neither marked down nor lost.
    pub fn usable(peer: *const Peer) bool {
        return peer.addr != null and !peer.down and !peer.lost;
    }
};

/// The endpoint layer, as the link layer calls it.
pub const Sink = struct {
    context: *anyopaque,
    receiver: *const link_kind.Receiver.VTable,
    /// Under mu: `peer`'s last link died (`outcome` says how); fail what waits on it.
    link_lost_locked: *const fn (context: *anyopaque, peer: u32, outcome: link_kind.RxOutcome) void,
};

pub const Identity = tcp.Identity;

pub const Options = struct {
    identity: Identity,
    listen: sys.Address,
    env: link_kind.Env,
};

/// Why acquire() found no link.
pub const AcquireFailure = union(enum) {
    /// should_stop said so (the op failed, was canceled, timed out, or the rank stops).
    stop,
    down,
    no_address,
    dial: struct { addr: sys.Address, err: DialFailure },
    reset,
    no_thread,
};

pub const DialFailure = tcp.DialError || error{OutOfMemory};

pub const Acquired = union(enum) {
    link: *Link,
    failed: AcquireFailure,
};

pub const SendFailure = error{
    /// The link was closing (another thread closed it) before or while we sent.
    LinkClosed,
    /// The peer closed it while we sent.
    PeerClosed,
    /// We gave up mid-frame (abort): the link is closed now.
    Broken,
    /// We gave up before any byte of the frame went out: the link is fine.
    Aborted,
};

pub const Links = struct {
    alloc: std.mem.Allocator,
    mu: *std.Thread.Mutex,
    sink: Sink,
    identity: Identity,
    env: link_kind.Env,
    /// Started kinds' per-rank contexts (null: not usable here), by index in kinds.all.
    kind_contexts: [kinds.all.len]?*anyopaque = [_]?*anyopaque{null} ** kinds.all.len,
    listen_fd: sys.Fd,
    port: u16,
    listener: ?std.Thread = null,
    stopping: std.atomic.Value(bool) = .init(false),
    peers: [world_size_max]Peer = [_]Peer{.{}} ** world_size_max,
    /// Bumped (under the lock) whenever a peer's address, host, down / lost state or
    /// generation changes: what a cached board team depends on (Net.boardTeamOf).
    peers_changed: std.atomic.Value(u64) = .init(0),
    peer_cond: std.Thread.Condition = .{},
    threads_live: u32 = 0,
    threads_cond: std.Thread.Condition = .{},
    links_live: u32 = 0,
    /// Connections in their handshake, by slot; tickets tell a slot's occupants apart.
    handshakes: [handshakes_max]?Handshake = [_]?Handshake{null} ** handshakes_max,
    handshake_tickets: u64 = 0,
    /// Connections the listener took (admitted or not), ever.
    accepted_total: u64 = 0,
    /// Repeated lines about strangers (bad handshakes, refusals, evictions).
    stranger_log: log_limit.Limiter = .{},

    /// Binds the listener and starts the kinds. `links` stays at this address (threads point
    /// to it); listen() starts accepting.
    pub fn init(links: *Links, alloc: std.mem.Allocator, mu: *std.Thread.Mutex, sink: Sink, options: Options) !void {
        std.debug.assert(options.identity.rank < options.identity.world_size_max);
        std.debug.assert(options.identity.world_size_max <= world_size_max);
        const listen_fd = try sys.listenTcp(options.listen);
        links.* = .{
            .alloc = alloc,
            .mu = mu,
            .sink = sink,
            .identity = options.identity,
            .env = options.env,
            .listen_fd = listen_fd,
            .port = sys.localPort(listen_fd),
        };
        for (kinds.all, 0..) |kind, i| links.kind_contexts[i] = kind.start(&links.env);
        if (links.kind_contexts[kinds.base_index] == null) {
            links.stopKinds();
            sys.closeFd(listen_fd);
            return error.OutOfMemory;
        }
    }

    pub fn listen(links: *Links) !void {
        std.debug.assert(links.listener == null);
        links.listener = try std.Thread.spawn(.{ .stack_size = thread_stack_bytes }, listenLoop, .{links});
    }

    fn stopKinds(links: *Links) void {
        for (kinds.all, &links.kind_contexts) |kind, *slot| {
            if (slot.*) |ctx| kind.stop(ctx);
            slot.* = null;
        }
    }

    /// Stops the listener, closes every link and waits for every thread of this layer.
    pub fn deinit(links: *Links) void {
        links.stopping.store(true, .release);
        sys.shutdownBoth(links.listen_fd); // wakes the listener's poll at once
        if (links.listener) |thread| thread.join();
        sys.closeFd(links.listen_fd);
        links.mu.lock();
        for (&links.peers) |*peer| {
            for (peer.links) |maybe| if (maybe) |link| closeLinkLocked(link);
        }
        links.peer_cond.broadcast();
        var waits: u32 = 0;
        while (links.threads_live > 0) : (waits += 1) {
            links.threads_cond.timedWait(links.mu, 50 * std.time.ns_per_ms) catch {};
        }
        links.mu.unlock();
        links.stopKinds();
    }

    pub fn rank(links: *const Links) u32 {
        return links.identity.rank;
    }

    // ---- peers ----

    /// Where `peer` listens and which host it is on. Resets its links when anything changed
    /// or it was down / lost (a rejoined rank). Returns whether it was reset.
    pub fn setPeerLocked(links: *Links, peer_rank: u32, addr: sys.Address, host_id: u64) bool {
        std.debug.assert(peer_rank < links.identity.world_size_max);
        const peer = &links.peers[peer_rank];
        // The first address keeps links the peer already dialed to us (it may have learned our
        // address first); a changed address, or a peer down / lost, starts over.
        const changed = if (peer.addr) |old| !old.eql(addr) or peer.host_id != host_id else false;
        _ = links.peers_changed.fetchAdd(1, .release);
        if (!changed and !peer.down and !peer.lost) {
            peer.addr = addr;
            peer.host_id = host_id;
            return false;
        }
        for (peer.links) |maybe| if (maybe) |link| closeLinkLocked(link);
        peer.addr = addr;
        peer.host_id = host_id;
        peer.down = false;
        peer.lost = false;
        peer.generation +%= 1;
        links.peer_cond.broadcast();
        return true;
    }

    /// Marks `peer` down (sticky until setPeerLocked) and closes its links.
    pub fn peerDownLocked(links: *Links, peer_rank: u32) void {
        std.debug.assert(peer_rank < links.identity.world_size_max);
        const peer = &links.peers[peer_rank];
        peer.down = true;
        peer.generation +%= 1;
        _ = links.peers_changed.fetchAdd(1, .release);
        for (peer.links) |maybe| if (maybe) |link| closeLinkLocked(link);
        links.peer_cond.broadcast();
    }

    /// Live links by kind name (tests and diagnostics), indexed like kinds.all.
    pub fn linkCountsLocked(links: *Links) [kinds.all.len]u32 {
        var counts = [_]u32{0} ** kinds.all.len;
        for (links.peers) |peer| for (peer.links) |maybe| {
            const link = maybe orelse continue;
            if (link.closing.load(.acquire)) continue;
            counts[link.kind] += 1;
        };
        return counts;
    }

    /// Bit i set: a live link of kinds.all[i] to `peer_rank` (GET /cluster says which).
    pub fn peerKindsLocked(links: *Links, peer_rank: u32) u32 {
        var mask: u32 = 0;
        for (links.peers[peer_rank].links) |maybe| {
            const link = maybe orelse continue;
            if (!link.closing.load(.acquire)) mask |= @as(u32, 1) << @intCast(link.kind);
        }
        return mask;
    }

    /// Kind indices (into kinds.all) in the order the dialer offers them to `peer`: started
    /// kinds that want it, highest preference first; the base kind always last.
    fn offerOrderLocked(links: *Links, peer_rank: u32, order: *[kinds.all.len]u8) []const u8 {
        const info = link_kind.PeerInfo{ .rank = peer_rank, .host_id = links.peers[peer_rank].host_id };
        var prefs: [kinds.all.len]u8 = undefined;
        var len: usize = 0;
        for (kinds.all, 0..) |kind, i| {
            if (i == kinds.base_index) continue;
            const ctx = links.kind_contexts[i] orelse continue;
            prefs[i] = kind.preference(ctx, &links.env, info);
            if (prefs[i] <= link_kind.preference_base) continue;
            // Insertion sort, highest first (a handful of kinds).
            var at = len;
            while (at > 0 and prefs[order[at - 1]] < prefs[i]) : (at -= 1) order[at] = order[at - 1];
            order[at] = @intCast(i);
            len += 1;
        }
        order[len] = kinds.base_index;
        return order[0 .. len + 1];
    }

    // ---- dialing ----

    /// A live link to `peer` (dialing it when there is none), with a reference held; release()
    /// gives it back. Waits for another thread's dial of the same peer until `deadline_ns`.
    pub fn acquire(links: *Links, peer_rank: u32, deadline_ns: u64, should_stop: link_kind.Abort) Acquired {
        std.debug.assert(peer_rank < links.identity.world_size_max and peer_rank != links.rank());
        links.mu.lock();
        const peer = &links.peers[peer_rank];
        var order_buf: [kinds.all.len]u8 = undefined;
        var waits: u64 = 0;
        const addr, const generation, const order = while (true) : (waits += 1) {
            if (should_stop.check() or links.stopping.load(.acquire)) return links.unlockFailed(.stop);
            if (peer.down) return links.unlockFailed(.down);
            for (peer.links) |maybe| {
                const link = maybe orelse continue;
                if (link.closing.load(.acquire)) continue;
                link.refs += 1;
                links.mu.unlock();
                return .{ .link = link };
            }
            const addr = peer.addr orelse return links.unlockFailed(.no_address);
            if (!peer.dialing) {
                peer.dialing = true;
                break .{ addr, peer.generation, links.offerOrderLocked(peer_rank, &order_buf) };
            }
            const now = sys.monotonicNs();
            if (now >= deadline_ns) return links.unlockFailed(.stop);
            links.peer_cond.timedWait(links.mu, deadline_ns - now) catch {};
        };
        links.mu.unlock();

        const remaining_ms: u32 = @intCast(@min(connect_timeout_ms_max, (deadline_ns -| sys.monotonicNs()) / std.time.ns_per_ms + 1));
        const dialed = links.dialLink(peer_rank, addr, order, remaining_ms);

        links.mu.lock();
        peer.dialing = false;
        links.peer_cond.broadcast();
        const link = dialed catch |err| return links.unlockFailed(.{ .dial = .{ .addr = addr, .err = err } });
        if (generation != peer.generation or !links.installLocked(link)) {
            links.mu.unlock();
            links.destroyLink(link);
            return .{ .failed = .reset };
        }
        link.refs = 2; // the receive thread and this sender
        links.threads_live += 1;
        links.mu.unlock();
        const thread = std.Thread.spawn(.{ .stack_size = thread_stack_bytes }, linkRun, .{link}) catch {
            links.mu.lock();
            closeLinkLocked(link);
            links.removeLinkLocked(link);
            link.refs -= 1;
            links.links_live -= 1;
            links.threads_live -= 1;
            links.threads_cond.broadcast();
            links.mu.unlock();
            links.release(link);
            return .{ .failed = .no_thread };
        };
        thread.detach();
        return .{ .link = link };
    }

    fn unlockFailed(links: *Links, why: AcquireFailure) Acquired {
        links.mu.unlock();
        return .{ .failed = why };
    }

    pub fn release(links: *Links, link: *Link) void {
        links.mu.lock();
        std.debug.assert(link.refs > 0);
        link.refs -= 1;
        const last = link.refs == 0;
        links.mu.unlock();
        if (last) links.destroyLink(link);
    }

    /// Connects and handshakes, offering the kinds in `order` (the first that makes an offer).
    fn dialLink(links: *Links, peer_rank: u32, addr: sys.Address, order: []const u8, timeout_ms: u32) DialFailure!*Link {
        std.debug.assert(order.len > 0 and order[order.len - 1] == kinds.base_index);
        const info = link_kind.PeerInfo{ .rank = peer_rank, .host_id = 0 };
        var blob: [wire.link_blob_bytes_max]u8 = undefined;
        const kind_index: u8, const pending = for (order) |i| {
            const ctx = links.kind_contexts[i].?;
            if (kinds.all[i].offer(ctx, &links.env, info, &blob)) |p| break .{ i, p };
        } else return error.OutOfMemory;
        var state: ?*anyopaque = pending.link;
        defer if (state) |s| kinds.all[kind_index].destroy(links.kind_contexts[kind_index].?, s);
        std.debug.assert(pending.blob_len <= blob.len);
        const offered: wire.LinkKind = @enumFromInt(kinds.all[kind_index].id);
        const dialed = try links.dialRetrying(addr, peer_rank, .{ .kind = offered, .blob = blob[0..pending.blob_len] }, timeout_ms);
        errdefer sys.closeFd(dialed.fd);
        var taken = kind_index;
        if (dialed.kind != offered) {
            sys.logLine("rank {d}: rank {d} declined {s}; using tcp", .{ links.rank(), peer_rank, kinds.all[kind_index].name });
            taken = kinds.base_index;
            const base = kinds.all[taken];
            const base_pending = base.offer(links.kind_contexts[taken].?, &links.env, info, &blob) orelse return error.OutOfMemory;
            base.complete(links.kind_contexts[taken].?, base_pending.link, info, dialed.replyBlob()) catch return error.Protocol;
            const link = try links.createLink(dialed.fd, peer_rank, taken, base_pending.link);
            tcp.setStreaming(dialed.fd);
            return link;
        }
        try kinds.all[taken].complete(links.kind_contexts[taken].?, pending.link, info, dialed.replyBlob());
        const link = try links.createLink(dialed.fd, peer_rank, taken, pending.link);
        state = null; // the link owns it now
        tcp.setStreaming(dialed.fd);
        return link;
    }

    /// tcp.dial, again while the acceptor drops us unanswered (full of strangers' handshakes)
    /// and `timeout_ms` lasts.
    fn dialRetrying(links: *Links, addr: sys.Address, peer_rank: u32, offer: tcp.Offer, timeout_ms: u32) tcp.DialError!tcp.Dialed {
        const deadline_ns = sys.monotonicNs() + @as(u64, timeout_ms) * std.time.ns_per_ms;
        var wait_ms: u32 = redial_wait_ms_min;
        var tries: u32 = 0;
        while (true) : (tries += 1) {
            const left_ms: u32 = @intCast((deadline_ns -| sys.monotonicNs()) / std.time.ns_per_ms);
            const result = tcp.dial(addr, links.identity, peer_rank, offer, @max(left_ms, 1));
            const dropped = if (result) |_| false else |err| err == error.Dropped;
            if (!dropped or links.stopping.load(.acquire) or left_ms <= wait_ms) return result;
            if (tries == 0) sys.logLine("rank {d}: rank {d} dropped our connection before its handshake; trying again", .{ links.rank(), peer_rank });
            sys.sleepNs(@as(u64, wait_ms) * std.time.ns_per_ms);
            wait_ms = @min(wait_ms * 2, redial_wait_ms_max);
        }
    }

    fn createLink(links: *Links, fd: sys.Fd, peer_rank: u32, kind_index: u8, state: *anyopaque) error{OutOfMemory}!*Link {
        const link = try links.alloc.create(Link);
        link.* = .{ .links = links, .fd = fd, .peer = peer_rank, .kind = kind_index, .state = state };
        return link;
    }

    /// Adds a handshaken link to its peer's table. False when the peer is down or we stop.
    fn installLocked(links: *Links, link: *Link) bool {
        const peer = &links.peers[link.peer];
        if (links.stopping.load(.acquire) or peer.down) return false;
        var free_slot: ?usize = null;
        for (peer.links, 0..) |maybe, i| {
            if (maybe == null and free_slot == null) free_slot = i;
        }
        if (free_slot == null) {
            // Full (a flapping peer): the oldest goes.
            closeLinkLocked(peer.links[0].?);
            links.removeLinkLocked(peer.links[0].?);
            free_slot = 0;
        }
        peer.links[free_slot.?] = link;
        link.generation = peer.generation;
        if (peer.lost) _ = links.peers_changed.fetchAdd(1, .release);
        peer.lost = false;
        links.links_live += 1;
        return true;
    }

    fn removeLinkLocked(links: *Links, link: *Link) void {
        for (&links.peers[link.peer].links) |*slot| {
            if (slot.* == link) slot.* = null;
        }
    }

    /// Starts closing `link`: its socket shuts down and the kind wakes its sleepers. The
    /// receive thread then leaves, and the last reference destroys it.
    pub fn closeLinkLocked(link: *Link) void {
        if (link.closing.load(.acquire)) return;
        link.closed_by_us = true;
        link.closing.store(true, .release);
        sys.shutdownBoth(link.fd);
        link.ops().wake(link.state);
    }

    fn destroyLink(links: *Links, link: *Link) void {
        std.debug.assert(link.refs == 0);
        link.ops().destroy(links.kind_contexts[link.kind].?, link.state);
        sys.closeFd(link.fd);
        links.alloc.destroy(link);
    }

    // ---- sending ----

    /// Sends one frame on `link` (a reference held). On PeerClosed and Broken the link is
    /// closed here.
    pub fn send(links: *Links, link: *Link, header: *const wire.FrameHeader, payload: []const u8, abort: link_kind.Abort) SendFailure!void {
        std.debug.assert(link.refs > 0);
        std.debug.assert(payload.len == header.chunk_len and payload.len <= link.chunkBytes());
        link.write_mu.lock();
        defer link.write_mu.unlock();
        if (link.closing.load(.acquire)) return error.LinkClosed;
        link.ops().send(link.state, link.fd, header, payload, abort) catch |err| return links.sendFailure(link, err);
    }

    /// What a kind's SendError means for the link: Closed and Broken close it; Aborted leaves
    /// it usable (unless someone else is closing it).
    fn sendFailure(links: *Links, link: *Link, err: link_kind.SendError) SendFailure {
        if (err == error.Aborted) return if (link.closing.load(.acquire)) error.LinkClosed else error.Aborted;
        links.mu.lock();
        defer links.mu.unlock();
        const already = link.closing.load(.acquire);
        closeLinkLocked(link);
        if (err == error.Closed) return error.PeerClosed;
        return if (already) error.LinkClosed else error.Broken;
    }

    /// Sends `bytes` as one rendezvous (link_kind.Rendezvous) when the link's kind offers it
    /// at this size: a descriptor frame, then a wait until the peer has taken the bytes.
    /// False: the caller sends frames. `header` gives src_rank, op_id and seq.
    pub fn sendRendezvous(links: *Links, link: *Link, header: wire.FrameHeader, bytes: []const u8, abort: link_kind.Abort) SendFailure!bool {
        const rendezvous = link.ops().rendezvous orelse return false;
        if (bytes.len < rendezvous.min_bytes(link.state)) return false;
        var desc: [wire.rendezvous_desc_bytes_max]u8 = undefined;
        const desc_len = rendezvous.expose(link.state, bytes, &desc) orelse return false;
        std.debug.assert(desc_len > 0 and desc_len <= desc.len);
        var h = header;
        h.flags = wire.flag_rendezvous;
        h.chunk_len = @intCast(desc_len);
        h.msg_len = bytes.len;
        h.offset = 0;
        h.seal();
        links.send(link, &h, desc[0..desc_len], abort) catch |err| {
            rendezvous.withdraw(link.state, desc[0..desc_len]);
            return err;
        };
        // Aborted (op failed or canceled): the link carries on, the peer is alive.
        rendezvous.await_taken(link.state, desc[0..desc_len], abort) catch |err| return links.sendFailure(link, err);
        return true;
    }

    // ---- accepting ----

    fn listenLoop(links: *Links) void {
        while (!links.stopping.load(.acquire)) {
            const accepted = sys.acceptTimeout(links.listen_fd, 100) catch {
                sys.sleepNs(10 * std.time.ns_per_ms);
                continue;
            } orelse continue;
            links.mu.lock();
            links.accepted_total += 1;
            const slot = links.enterHandshakeLocked(accepted);
            if (slot != null) links.threads_live += 1;
            links.mu.unlock();
            const entered = slot orelse {
                sys.closeFd(accepted.fd);
                continue;
            };
            const thread = std.Thread.spawn(.{ .stack_size = thread_stack_bytes }, acceptThread, .{ links, accepted, entered }) catch {
                links.mu.lock();
                links.leaveHandshakeLocked(entered);
                links.threads_live -= 1;
                links.threads_cond.broadcast();
                links.mu.unlock();
                sys.closeFd(accepted.fd);
                continue;
            };
            thread.detach();
        }
    }

    const HandshakeSlot = struct { index: u32, ticket: u64 };

    /// Registers an accepted connection for its handshake, evicting the oldest one from the
    /// same source (or any source) when that is full. Null: refuse it.
    fn enterHandshakeLocked(links: *Links, accepted: sys.Accepted) ?HandshakeSlot {
        if (links.stopping.load(.acquire)) return null;
        if (links.links_live >= links_max) {
            links.stranger_log.log("rank {d}: refused connection from {any}: {d} links open", .{ links.rank(), accepted.addr, links_max });
            return null;
        }
        const source = sourceKey(accepted.addr);
        var same_source: u32 = 0;
        var oldest_same: ?u32 = null;
        var oldest_any: ?u32 = null;
        var free: ?u32 = null;
        for (&links.handshakes, 0..) |*slot, i| {
            const hs = slot.* orelse {
                if (free == null) free = @intCast(i);
                continue;
            };
            if (oldest_any == null or hs.ticket < links.handshakes[oldest_any.?].?.ticket) oldest_any = @intCast(i);
            if (hs.source != source) continue;
            same_source += 1;
            if (oldest_same == null or hs.ticket < links.handshakes[oldest_same.?].?.ticket) oldest_same = @intCast(i);
        }
        const index = if (same_source >= handshakes_per_source_max)
            links.evictHandshakeLocked(oldest_same.?)
        else
            free orelse links.evictHandshakeLocked(oldest_any.?);
        std.debug.assert(links.handshakes[index] == null);
        links.handshake_tickets += 1;
        links.handshakes[index] = .{ .fd = accepted.fd, .addr = accepted.addr, .source = source, .ticket = links.handshake_tickets };
        return .{ .index = index, .ticket = links.handshake_tickets };
    }

    /// Ends an unauthenticated connection's handshake now (its thread sees the socket shut and
    /// closes it); returns its slot, free.
    fn evictHandshakeLocked(links: *Links, index: u32) u32 {
        const hs = links.handshakes[index].?;
        // The thread closes the fd only after leaving its slot (under mu): it is still open.
        sys.shutdownBoth(hs.fd);
        links.handshakes[index] = null;
        links.stranger_log.log("rank {d}: dropped an unauthenticated connection from {any} (handshake slots full)", .{ links.rank(), hs.addr });
        return index;
    }

    fn leaveHandshakeLocked(links: *Links, slot: HandshakeSlot) void {
        const hs = links.handshakes[slot.index] orelse return;
        if (hs.ticket == slot.ticket) links.handshakes[slot.index] = null;
    }

    fn threadExit(links: *Links) void {
        links.mu.lock();
        links.threads_live -= 1;
        links.threads_cond.broadcast();
        links.mu.unlock();
    }

    fn rejectAccepted(links: *Links, accepted: sys.Accepted, comptime fmt: []const u8, args: anytype) void {
        links.stranger_log.log("rank {d}: rejected connection from {any}: " ++ fmt, .{ links.rank(), accepted.addr } ++ args);
        sys.closeFd(accepted.fd);
    }

    /// Whether a Hello may join: addressed to us, from a rank of our world, our cluster and token.
    fn admission(links: *const Links, hello: *const tcp.Hello) wire.AckStatus {
        const h = hello.header;
        const id = links.identity;
        if (h.dst_rank != id.rank or h.src_rank >= id.world_size_max or h.src_rank == id.rank or
            h.world_size_max != id.world_size_max) return .wrong_rank;
        if (!std.mem.eql(u8, hello.clusterId(), id.cluster_id)) return .bad_cluster;
        if (!tcp.secretEqual(hello.token(), id.token)) return .bad_token;
        if (links.stopping.load(.acquire)) return .shutting_down;
        return .ok;
    }

    /// The kind that takes an authenticated Hello: the offered one when it is started here and
    /// accepts, else the base kind.
    fn acceptKind(links: *Links, hello: *const tcp.Hello, blob_out: []u8) ?struct { index: u8, pending: link_kind.Pending } {
        const info = link_kind.PeerInfo{ .rank = hello.header.src_rank, .host_id = hello.header.host_id };
        if (kinds.indexOfId(@intFromEnum(hello.kind))) |i| {
            if (i != kinds.base_index) if (links.kind_contexts[i]) |ctx| {
                if (kinds.all[i].accept(ctx, &links.env, info, hello.blob(), blob_out)) |pending|
                    return .{ .index = @intCast(i), .pending = pending };
            };
        }
        const base = kinds.all[kinds.base_index];
        const pending = base.accept(links.kind_contexts[kinds.base_index].?, &links.env, info, "", blob_out) orelse return null;
        return .{ .index = kinds.base_index, .pending = pending };
    }

    fn acceptThread(links: *Links, accepted: sys.Accepted, slot: HandshakeSlot) void {
        defer links.threadExit();
        var hello: tcp.Hello = undefined;
        const read = tcp.readHello(accepted.fd, &hello, &links.stopping);
        links.mu.lock();
        links.leaveHandshakeLocked(slot); // authenticated or not, no longer evictable
        links.mu.unlock();
        read catch |err| return links.rejectAccepted(accepted, "bad handshake ({s})", .{@errorName(err)});
        const status = links.admission(&hello);
        const h = hello.header;
        if (status != .ok) {
            tcp.sendAck(accepted.fd, status, links.rank(), .tcp, "");
            return links.rejectAccepted(accepted, "{s} (claims rank {d} -> {d}, world {d})", .{ @tagName(status), h.src_rank, h.dst_rank, h.world_size_max });
        }
        var blob: [wire.link_blob_bytes_max]u8 = undefined;
        const taken = links.acceptKind(&hello, &blob) orelse return links.rejectAccepted(accepted, "out of memory", .{});
        const kind = kinds.all[taken.index];
        const link = links.createLink(accepted.fd, h.src_rank, taken.index, taken.pending.link) catch {
            kind.destroy(links.kind_contexts[taken.index].?, taken.pending.link);
            return links.rejectAccepted(accepted, "out of memory", .{});
        };
        tcp.sendAck(accepted.fd, .ok, links.rank(), @enumFromInt(kind.id), blob[0..taken.pending.blob_len]);
        tcp.setStreaming(accepted.fd);

        links.mu.lock();
        if (!links.installLocked(link)) {
            links.mu.unlock();
            links.stranger_log.log("rank {d}: dropped link from rank {d} (down or shutting down)", .{ links.rank(), h.src_rank });
            links.destroyLink(link);
            return;
        }
        link.refs = 1;
        links.threads_live += 1; // linkRun's own exit accounting
        links.mu.unlock();
        linkRun(link);
    }

    // ---- receiving ----

    /// A link's receive thread: the kind's receive loop, then the link's end.
    fn linkRun(link: *Link) void {
        const links = link.links;
        const rx = link_kind.Receiver{
            .context = links.sink.context,
            .vtable = links.sink.receiver,
            .peer = link.peer,
            .closing = &link.closing,
            .stopping = &links.stopping,
        };
        const outcome = link.ops().receive(link.state, link.fd, &rx);
        links.mu.lock();
        links.removeLinkLocked(link);
        const by_us = link.closed_by_us;
        closeLinkLocked(link); // senders blocked on it (ring full) give up now
        if (!by_us or outcome == .protocol) links.linkLostLocked(link, outcome);
        std.debug.assert(link.refs > 0);
        link.refs -= 1;
        const last = link.refs == 0;
        links.links_live -= 1;
        links.mu.unlock();
        if (last) links.destroyLink(link);
        links.threadExit();
    }

    /// The link died under us: when no other link to that peer is up, receives from it fail
    /// at once until a new link comes up; ops waiting on it fail now.
    fn linkLostLocked(links: *Links, link: *Link, outcome: link_kind.RxOutcome) void {
        const peer = &links.peers[link.peer];
        if (link.generation != peer.generation) return;
        var others = false;
        for (peer.links) |maybe| {
            if (maybe) |other| others = others or !other.closing.load(.acquire);
        }
        if (!others) {
            _ = links.peers_changed.fetchAdd(1, .release);
            peer.lost = true;
            peer.lost_protocol = outcome == .protocol;
        }
        if (outcome == .protocol) {
            links.stranger_log.log("rank {d}: protocol error on link from rank {d}: closed it", .{ links.rank(), link.peer });
        }
        links.sink.link_lost_locked(links.sink.context, link.peer, outcome);
    }
};
