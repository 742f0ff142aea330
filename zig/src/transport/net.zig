//! Net: one rank's data plane. Owns the listener, the links to peers (TCP, or shm rings with a
//! TCP socket kept for the handshake and liveness), and the matching of incoming frames to
//! posted receives. Each op registers an `Endpoint` (op id + group); `Endpoint.comm()` is the
//! `transport.Comm` the algorithms run on.
//!
//! Receiving: one thread per link reads frames and routes each by (op id, source rank, message
//! sequence): straight into a posted receive buffer, else into a bounded stash that irecv()
//! claims later. A full stash stops the link thread (backpressure through TCP / the ring).
//! Sending is synchronous on the op's thread (isend returns once the bytes are in the kernel or
//! the ring); a frame is one chunk of a message, so big messages interleave with other ops.
//! Failures: a link that closes fails the ops waiting on that peer (PeerFailed naming it); every
//! wait is bounded by the op's deadline and wakes on cancel.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const tcp = @import("tcp.zig");
const shm = @import("shm.zig");
const transport = @import("transport.zig");
const board_mod = @import("board.zig");
const arena = @import("arena.zig");
const op = @import("../op.zig");

pub const Error = transport.Error;
pub const world_size_max = op.world_size_max;
const GroupSet = std.StaticBitSet(world_size_max);
pub const endpoints_max = 256;
/// Sockets (accepted, dialed, in handshake) one rank keeps at once.
pub const links_max = 256;
const EndpointMask = std.meta.Int(.unsigned, endpoints_max);
pub const links_per_peer_max = 4;
const finished_ids_max = 256;
const stash_entries_max = 1 << 14;
pub const stash_bytes_default: u64 = 256 << 20;
/// Stashed frames of an op this rank never registers are dropped after this long.
const orphan_ttl_ns: u64 = 30 * std.time.ns_per_s;
const rx_idle_wait_ns: u64 = 100 * std.time.ns_per_ms;
const send_space_wait_ns: u64 = 10 * std.time.ns_per_ms;
const connect_timeout_ms_max: u32 = 5000;
const requests_max = transport.requests_in_flight_max;

comptime {
    std.debug.assert(requests_max <= 64); // reqs_used is a u64 mask
}

pub const Mode = enum { auto, tcp, shm };

pub const Options = struct {
    rank: u32,
    world_size_max: u32,
    cluster_id: []const u8,
    token: []const u8 = "",
    listen: sys.Address,
    mode: Mode = .auto,
    host_id: u64,
    stash_bytes_max: u64 = stash_bytes_default,
    shm_slot_count: u32 = shm.slot_count_default,
    shm_slot_bytes: u32 = shm.slot_bytes_default,
    tcp_chunk_bytes: u32 = wire.chunk_bytes_max,
};

pub const Failure = struct {
    err: Error,
    /// Global rank that failed the op, or -1.
    peer: i32,
    text_len: usize = 0,
    text: [240]u8 = undefined,

    pub fn message(self: *const Failure) []const u8 {
        return self.text[0..self.text_len];
    }
};

const Req = struct {
    kind: enum { send, recv } = .recv,
    peer: u32 = 0,
    seq: u32 = 0,
    buf: []u8 = &.{},
    /// Bytes claimed by routed frames (catches overlapping / duplicate frames).
    routed: u64 = 0,
    received: u64 = 0,
    arrived: bool = false,
    /// Link threads writing into `buf` right now; close() waits for 0.
    busy: u32 = 0,
    done: std.atomic.Value(bool) = .init(false),
    /// reduce each chunk into buf instead of copying it.
    reduce: ?transport.ReduceSpec = null,

    /// Puts one chunk at `offset` of the message into buf (copy, or reduce with `mine`).
    fn deliver(req: *const Req, offset: u64, data: []const u8) void {
        const dst = req.buf[offset..][0..data.len];
        if (req.reduce) |r| {
            r.apply(r.dtype, r.redop, dst, r.mine[offset..][0..data.len], data);
        } else {
            @memcpy(dst, data);
        }
    }
};

pub const Endpoint = struct {
    net: *Net = undefined,
    op_id: u64 = 0,
    group: [world_size_max]u32 = undefined,
    group_size: u32 = 0,
    group_rank: u32 = 0,
    group_set: GroupSet = GroupSet.initEmpty(),
    deadline_ns: u64 = 0,
    timeout_ms: u32 = 0,
    canceled: std.atomic.Value(bool) = .init(false),
    /// Set once (with `failure`) under net.mu; read lock-free on fast paths.
    failed: std.atomic.Value(bool) = .init(false),
    abandoned: std.atomic.Value(bool) = .init(false),
    failure: ?Failure = null,
    cond: std.Thread.Condition = .{},
    send_seq: [world_size_max]u32 = undefined,
    recv_seq: [world_size_max]u32 = undefined,
    reqs: [requests_max]Req = undefined,
    reqs_used: u64 = 0,
    registered: bool = false,
    /// Where open() put it in Net.endpoints.
    endpoint_index: u32 = 0,

    pub fn comm(self: *Endpoint) transport.Comm {
        std.debug.assert(self.registered);
        return .{ .context = self, .vtable = &Net.comm_vtable, .rank = self.group_rank, .size = self.group_size };
    }
};

const Link = struct {
    net: *Net,
    fd: sys.Fd,
    peer: u32,
    kind: wire.LinkKind,
    generation: u32 = 0,
    /// Holders: the link thread and senders (under net.mu).
    refs: u32 = 0,
    closing: std.atomic.Value(bool) = .init(false),
    closed_by_us: bool = false,
    write_mu: std.Thread.Mutex = .{},
    tx: ?shm.Ring = null,
    rx: ?shm.Ring = null,
};

const retired_boards_max = 64;

const PeerBoard = struct {
    board: ?board_mod.Board = null,
    generation: u32 = 0,
    /// Serial of the publish this rank last departed, per entry of that board.
    departed_serials: [board_mod.entries_max]u64 = [_]u64{0} ** board_mod.entries_max,
};

/// The boards of one op's group, in group order (Net.boardTeam).
/// Board ops run only in groups of at most board_mod.counts_max ranks.
pub const BoardTeam = struct {
    boards: [board_mod.counts_max]board_mod.Board,
    departed_serials: [board_mod.counts_max]*[board_mod.entries_max]u64,
};

/// Sweeping our rank's stale segments keeps the board of another live process that claims
/// our rank (a duplicate start the control plane is about to refuse).
fn keepLiveBoard(name: []const u8) bool {
    if (std.mem.indexOf(u8, name, "board-") == null) return false;
    const segment = sys.shmOpen(name, board_mod.segmentBytes()) catch return false;
    defer segment.unmapSegment();
    const board = board_mod.Board{ .segment = segment, .header = @ptrCast(@alignCast(segment.ptr)) };
    return board.pid() != sys.processId() and board.ownerAlive();
}

/// Whether a rank makes a board: $MOONRING_BOARD (default on; every rank of a host must agree).
pub fn boardEnabled() bool {
    const value = sys.getenv("MOONRING_BOARD") orelse return true;
    return !std.mem.eql(u8, value, "0");
}

/// Whether large board contributions are read with process_vm_readv: $MOONRING_BOARD_CMA
/// (default on) and a probe of it on this process (seccomp may forbid it).
pub fn boardCma() bool {
    cma_once.call();
    return cma_usable;
}

var cma_once = std.once(probeCma);
var cma_usable = false;
fn probeCma() void {
    if (sys.getenv("MOONRING_BOARD_CMA")) |value| if (std.mem.eql(u8, value, "0")) return;
    const probe: u64 = 0x6d6f6f6e72696e67;
    var copy: u64 = 0;
    sys.processRead(sys.processId(), std.mem.asBytes(&copy), @intFromPtr(&probe)) catch |err| {
        sys.logLine("process_vm_readv is not usable here ({s}): large same-host collectives use the shm rings", .{@errorName(err)});
        return;
    };
    cma_usable = copy == probe;
}

const Peer = struct {
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
};

const StashEntry = struct {
    op_id: u64,
    src: u32,
    seq: u32,
    msg_len: u64,
    offset: u64,
    data: []u8,
    born_ns: u64,
};

const Target = union(enum) {
    direct: struct { ep: *Endpoint, req: *Req, dest: []u8 },
    stash: []u8,
    discard,
};

pub const Net = struct {
    alloc: std.mem.Allocator,
    opts: Options,
    cluster_buf: [wire.cluster_id_bytes_max]u8 = undefined,
    token_buf: [wire.token_bytes_max]u8 = undefined,
    cluster_hash: u64,
    listen_fd: sys.Fd,
    port: u16,
    listener: ?std.Thread = null,
    stopping: std.atomic.Value(bool) = .init(false),

    mu: std.Thread.Mutex = .{},
    peers: [world_size_max]Peer = [_]Peer{.{}} ** world_size_max,
    endpoints: [endpoints_max]?*Endpoint = [_]?*Endpoint{null} ** endpoints_max,
    /// Bit i: endpoints[i] is registered.
    endpoints_used: EndpointMask = 0,
    finished: [finished_ids_max]u64 = [_]u64{0} ** finished_ids_max,
    finished_next: u32 = 0,
    finished_count: u32 = 0,
    stash: std.ArrayListUnmanaged(StashEntry) = .empty,
    stash_bytes: u64 = 0,
    /// Stash buffers handed to link threads and not yet appended (capacity is reserved).
    stash_pending: u32 = 0,
    stash_full_logged: bool = false,
    stash_cond: std.Thread.Condition = .{},
    peer_cond: std.Thread.Condition = .{},
    threads_live: u32 = 0,
    threads_cond: std.Thread.Condition = .{},
    links_live: u32 = 0,
    shm_nonce: u32 = 0,
    /// This rank's board (board.zig) and the peers' (mapped on first use, per peer
    /// generation); null when the board is off or the transport is tcp.
    board: ?board_mod.Board = null,
    peer_boards: [world_size_max]PeerBoard = [_]PeerBoard{.{}} ** world_size_max,
    /// Peers' shared buffers this rank has mapped (board ops read them in place).
    peer_maps: arena.PeerMaps = .{},
    /// Boards replaced while an op may still read them; unmapped at deinit.
    retired_boards: std.BoundedArray(board_mod.Board, retired_boards_max) = .{},

    pub fn init(alloc: std.mem.Allocator, opts_in: Options) !*Net {
        if (opts_in.world_size_max == 0 or opts_in.world_size_max > world_size_max) return error.BadWorldSize;
        if (opts_in.rank >= opts_in.world_size_max) return error.BadRank;
        if (opts_in.cluster_id.len > wire.cluster_id_bytes_max) return error.ClusterIdTooLong;
        if (opts_in.token.len > wire.token_bytes_max) return error.TokenTooLong;
        if (opts_in.tcp_chunk_bytes == 0 or opts_in.tcp_chunk_bytes > wire.chunk_bytes_max) return error.BadChunk;
        const listen_fd = try sys.listenTcp(opts_in.listen);
        errdefer sys.closeFd(listen_fd);
        const net = try alloc.create(Net);
        errdefer alloc.destroy(net);
        net.* = .{
            .alloc = alloc,
            .opts = opts_in,
            .cluster_hash = std.hash.Wyhash.hash(0, opts_in.cluster_id),
            .listen_fd = listen_fd,
            .port = sys.localPort(listen_fd),
        };
        try net.stash.ensureTotalCapacity(alloc, stash_entries_max);
        errdefer net.stash.deinit(alloc);
        @memcpy(net.cluster_buf[0..opts_in.cluster_id.len], opts_in.cluster_id);
        @memcpy(net.token_buf[0..opts_in.token.len], opts_in.token);
        net.opts.cluster_id = net.cluster_buf[0..opts_in.cluster_id.len];
        net.opts.token = net.token_buf[0..opts_in.token.len];
        net.sweepOwnSegments();
        if (opts_in.mode != .tcp and boardEnabled()) {
            board_mod.sweepDead();
            var name_buf: [96]u8 = undefined;
            const name = net.boardName(&name_buf, net.rank(), net.port);
            net.board = board_mod.Board.create(name, net.rank(), sys.monotonicNs() ^ @intFromPtr(net)) catch |err| {
                sys.logLine("rank {d}: cannot create the board {s}{s} ({d} bytes): {s}; MOONRING_BOARD=0 on every rank turns it off", .{ net.rank(), sys.shm_dir, name, board_mod.segmentBytes(), @errorName(err) });
                return err;
            };
        }
        errdefer if (net.board) |b| b.unmap();
        net.listener = try std.Thread.spawn(.{ .stack_size = 256 * 1024 }, listenLoop, .{net});
        return net;
    }

    /// Stops the listener and every link; every endpoint must be closed already.
    pub fn deinit(net: *Net) void {
        net.stopping.store(true, .release);
        sys.shutdownBoth(net.listen_fd); // wakes the listener's poll at once
        if (net.listener) |thread| thread.join();
        sys.closeFd(net.listen_fd);
        net.mu.lock();
        for (net.endpoints) |slot| std.debug.assert(slot == null);
        for (&net.peers) |*peer| {
            for (peer.links) |maybe| if (maybe) |link| net.closeLinkLocked(link);
        }
        net.stash_cond.broadcast();
        net.peer_cond.broadcast();
        while (net.threads_live > 0) net.threads_cond.timedWait(&net.mu, 50 * std.time.ns_per_ms) catch {};
        for (net.stash.items) |entry| net.alloc.free(entry.data);
        net.stash.deinit(net.alloc);
        net.mu.unlock();
        if (net.board) |b| {
            b.markDead();
            b.unmap();
            var name_buf: [96]u8 = undefined;
            sys.shmUnlink(net.boardName(&name_buf, net.rank(), net.port));
        }
        for (net.peer_boards) |pb| if (pb.board) |b| b.unmap();
        for (net.retired_boards.constSlice()) |b| b.unmap();
        net.peer_maps.deinit();
        net.sweepOwnSegments();
        net.alloc.destroy(net);
    }

    fn rank(net: *const Net) u32 {
        return net.opts.rank;
    }

    fn shmPrefix(net: *const Net, buf: []u8, owner: u32) []const u8 {
        return std.fmt.bufPrint(buf, "moonring-{x:0>16}-{d}-", .{ net.cluster_hash, owner }) catch unreachable;
    }

    /// A board's name carries its owner's data port: a second process claiming the same rank
    /// (refused later by the control plane) never replaces a live rank's board.
    fn boardName(net: *const Net, buf: []u8, owner: u32, port: u16) []const u8 {
        var prefix_buf: [64]u8 = undefined;
        return std.fmt.bufPrint(buf, "{s}board-{d}", .{ net.shmPrefix(&prefix_buf, owner), port }) catch unreachable;
    }

    /// The boards of `ep`'s group when every peer of it is on this host with a live board
    /// (else false: the op runs over the links). Maps boards on first use and again after a
    /// peer restarted.
    pub fn boardTeam(net: *Net, ep: *const Endpoint, team: *BoardTeam) bool {
        return net.boardTeamOf(ep.group[0..ep.group_size], team);
    }

    /// boardTeam() for a group (global ranks, ascending) before its endpoint is open.
    pub fn boardTeamOf(net: *Net, group: []const u32, team: *BoardTeam) bool {
        const own = net.board orelse return false;
        if (group.len > board_mod.counts_max) return false;
        net.mu.lock();
        defer net.mu.unlock();
        for (group, 0..) |g, i| {
            if (g == net.rank()) {
                team.boards[i] = own;
                team.departed_serials[i] = &net.peer_boards[g].departed_serials; // unused
                continue;
            }
            const peer = &net.peers[g];
            if (peer.addr == null or peer.down or peer.lost or !net.wantShm(peer)) return false;
            const pb = &net.peer_boards[g];
            // The alive flag only (no syscall per op): a killed owner is caught by the waits.
            const current = if (pb.board) |b| pb.generation == peer.generation and b.aliveFlag() else false;
            if (!current) {
                var name_buf: [96]u8 = undefined;
                const fresh = board_mod.Board.open(net.boardName(&name_buf, g, peer.addr.?.getPort()), g) catch return false;
                if (!fresh.ownerAlive()) {
                    fresh.unmap();
                    return false;
                }
                if (pb.board) |old| {
                    if (net.retired_boards.len == retired_boards_max) net.retired_boards.orderedRemove(0).unmap();
                    net.retired_boards.appendAssumeCapacity(old);
                }
                pb.* = .{ .board = fresh, .generation = peer.generation };
            }
            team.boards[i] = pb.board.?;
            team.departed_serials[i] = &pb.departed_serials;
        }
        return true;
    }

    /// Why `ep` must stop now (failed, canceled, shutting down, past its deadline), or null;
    /// `peer` (global rank) names who it waited for.
    pub fn stopCheck(net: *Net, ep: *Endpoint, peer: u32, what: []const u8) ?Error {
        return net.stopReason(ep, peer, what);
    }

    /// The global rank `ep`'s recorded failure names, or -1.
    pub fn failedPeer(net: *Net, ep: *Endpoint) i32 {
        net.mu.lock();
        defer net.mu.unlock();
        const failure = ep.failure orelse return -1;
        return failure.peer;
    }

    /// Records `ep`'s failure (the first wins) and returns its error.
    pub fn failOp(net: *Net, ep: *Endpoint, err: Error, peer: i32, message: []const u8) Error {
        return net.fail(ep, err, peer, "{s}", .{message});
    }

    fn sweepOwnSegments(net: *Net) void {
        var buf: [64]u8 = undefined;
        const removed = sys.shmUnlinkPrefix(net.shmPrefix(&buf, net.rank()), keepLiveBoard);
        if (removed > 0) sys.logLine("rank {d}: removed {d} stale shm segment(s)", .{ net.rank(), removed });
    }

    // ---- peers ----

    /// Where `peer` listens and which host it is on. Resets its links when anything changed
    /// or it was down / lost (a rejoined rank).
    pub fn setPeer(net: *Net, peer_rank: u32, addr: sys.Address, host_id: u64) void {
        std.debug.assert(peer_rank < net.opts.world_size_max);
        net.mu.lock();
        defer net.mu.unlock();
        const peer = &net.peers[peer_rank];
        // The first address keeps links the peer already dialed to us (it may have learned our
        // address first); a changed address, or a peer down / lost, starts over.
        const changed = if (peer.addr) |old| !old.eql(addr) or peer.host_id != host_id else false;
        if (!changed and !peer.down and !peer.lost) {
            peer.addr = addr;
            peer.host_id = host_id;
            return;
        }
        for (peer.links) |maybe| if (maybe) |link| net.closeLinkLocked(link);
        peer.addr = addr;
        peer.host_id = host_id;
        peer.down = false;
        peer.lost = false;
        peer.generation +%= 1;
        net.peer_cond.broadcast();
    }

    /// Closes the peer's links and fails every op whose group contains it, at once.
    pub fn peerDown(net: *Net, peer_rank: u32) void {
        std.debug.assert(peer_rank < net.opts.world_size_max);
        net.mu.lock();
        defer net.mu.unlock();
        const peer = &net.peers[peer_rank];
        peer.down = true;
        peer.generation +%= 1;
        for (peer.links) |maybe| if (maybe) |link| net.closeLinkLocked(link);
        for (net.endpoints) |maybe| {
            const ep = maybe orelse continue;
            if (!ep.group_set.isSet(peer_rank)) continue;
            net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was marked down", .{peer_rank});
        }
        net.peer_cond.broadcast();
    }

    /// Live links by kind (tests and diagnostics).
    pub fn linkCounts(net: *Net) struct { tcp: u32, shm: u32 } {
        net.mu.lock();
        defer net.mu.unlock();
        var tcp_links: u32 = 0;
        var shm_links: u32 = 0;
        for (net.peers) |peer| for (peer.links) |maybe| {
            const link = maybe orelse continue;
            if (link.closing.load(.acquire)) continue;
            if (link.kind == .shm) shm_links += 1 else tcp_links += 1;
        };
        return .{ .tcp = tcp_links, .shm = shm_links };
    }

    fn wantShm(net: *const Net, peer: *const Peer) bool {
        return switch (net.opts.mode) {
            .tcp => false,
            .shm => true,
            .auto => peer.host_id != 0 and peer.host_id == net.opts.host_id,
        };
    }

    // ---- endpoints ----

    /// Registers an op. `group[i]` = global rank of group rank i (ascending).
    pub fn open(net: *Net, ep: *Endpoint, op_id: u64, group: []const u32, group_rank: u32, deadline_ns: u64, timeout_ms: u32) error{ TooManyOps, DuplicateOp }!void {
        std.debug.assert(group.len > 0 and group.len <= world_size_max and group_rank < group.len);
        std.debug.assert(group[group_rank] == net.rank());
        // Field by field: `reqs` (~5 KiB) needs no reset (reqs_used says which are live).
        ep.net = net;
        ep.op_id = op_id;
        ep.group_size = @intCast(group.len);
        ep.group_rank = group_rank;
        ep.group_set = GroupSet.initEmpty();
        ep.deadline_ns = deadline_ns;
        ep.timeout_ms = timeout_ms;
        ep.canceled = .init(false);
        ep.failed = .init(false);
        ep.abandoned = .init(false);
        ep.failure = null;
        ep.cond = .{};
        ep.reqs_used = 0;
        ep.registered = false;
        @memset(ep.send_seq[0..group.len], 0);
        @memset(ep.recv_seq[0..group.len], 0);
        for (group, 0..) |g, i| {
            std.debug.assert(g < net.opts.world_size_max);
            std.debug.assert(i == 0 or group[i - 1] < g);
            ep.group[i] = g;
            ep.group_set.set(g);
        }
        net.mu.lock();
        defer net.mu.unlock();
        // Only the registered endpoints are looked at (E16: copying and scanning all 256 was
        // ~15% of an 8-byte board op).
        var used = net.endpoints_used;
        while (used != 0) : (used &= used - 1) {
            if (net.endpoints[@ctz(used)].?.op_id == op_id) return error.DuplicateOp;
        }
        if (net.endpoints_used == std.math.maxInt(EndpointMask)) return error.TooManyOps;
        const slot: usize = @ctz(~net.endpoints_used);
        std.debug.assert(net.endpoints[slot] == null);
        net.endpoints_used |= @as(EndpointMask, 1) << @intCast(slot);
        ep.endpoint_index = @intCast(slot);
        // An id reused after it finished here: frames for it are welcome again.
        for (net.finished[0..net.finished_count]) |*id| {
            if (id.* == op_id) id.* = 0;
        }
        ep.registered = true;
        net.endpoints[slot] = ep;
    }

    /// Unregisters an op: no link thread writes into its buffers once this returns; frames
    /// that arrive for it later are dropped.
    pub fn close(net: *Net, ep: *Endpoint) void {
        std.debug.assert(ep.registered);
        ep.abandoned.store(true, .release);
        net.mu.lock();
        defer net.mu.unlock();
        std.debug.assert(net.endpoints[ep.endpoint_index] == ep);
        net.endpoints[ep.endpoint_index] = null;
        net.endpoints_used &= ~(@as(EndpointMask, 1) << @intCast(ep.endpoint_index));
        var waits: u32 = 0;
        while (endpointBusy(ep)) : (waits += 1) {
            // Link threads notice `abandoned` within tcp.io_poll_ms.
            ep.cond.timedWait(&net.mu, 10 * std.time.ns_per_ms) catch {};
            if (waits == 1000) sys.logLine("rank {d}: op {d}: still waiting for a link thread to leave its buffer", .{ net.rank(), ep.op_id });
        }
        var i: usize = 0;
        var freed = false;
        while (i < net.stash.items.len) {
            if (net.stash.items[i].op_id == ep.op_id) {
                net.dropStashLocked(i);
                freed = true;
            } else i += 1;
        }
        if (freed) net.stash_cond.broadcast();
        net.markFinishedLocked(ep.op_id);
        ep.reqs_used = 0;
        ep.registered = false;
    }

    /// Frames of `op_id` that arrive from now on are dropped (until it is opened again).
    fn markFinishedLocked(net: *Net, op_id: u64) void {
        net.finished[net.finished_next] = op_id;
        net.finished_next = (net.finished_next + 1) % finished_ids_max;
        net.finished_count = @min(net.finished_count + 1, finished_ids_max);
    }

    fn endpointBusy(ep: *const Endpoint) bool {
        var used = ep.reqs_used;
        while (used != 0) : (used &= used - 1) {
            if (ep.reqs[@ctz(used)].busy > 0) return true;
        }
        return false;
    }

    /// Makes every wait of the op return Canceled (sends notice within io_poll_ms).
    pub fn cancel(net: *Net, ep: *Endpoint) void {
        ep.canceled.store(true, .release);
        net.mu.lock();
        defer net.mu.unlock();
        ep.cond.broadcast();
    }

    fn failLocked(net: *Net, ep: *Endpoint, err: Error, peer: i32, comptime fmt: []const u8, args: anytype) void {
        _ = net;
        if (ep.failure == null) {
            var failure = Failure{ .err = err, .peer = peer };
            const text = std.fmt.bufPrint(&failure.text, fmt, args) catch failure.text[0..];
            failure.text_len = text.len;
            ep.failure = failure;
            ep.failed.store(true, .release);
        }
        ep.cond.broadcast();
    }

    fn fail(net: *Net, ep: *Endpoint, err: Error, peer: i32, comptime fmt: []const u8, args: anytype) Error {
        net.mu.lock();
        defer net.mu.unlock();
        net.failLocked(ep, err, peer, fmt, args);
        return ep.failure.?.err;
    }

    fn findEndpointLocked(net: *Net, op_id: u64) ?*Endpoint {
        var used = net.endpoints_used;
        while (used != 0) : (used &= used - 1) {
            const ep = net.endpoints[@ctz(used)].?;
            if (ep.op_id == op_id) return ep;
        }
        return null;
    }

    fn finishedLocked(net: *const Net, op_id: u64) bool {
        for (net.finished[0..net.finished_count]) |id| if (id == op_id and id != 0) return true;
        return false;
    }

    fn findRecvLocked(ep: *Endpoint, src: u32, seq: u32) ?*Req {
        var used = ep.reqs_used;
        while (used != 0) : (used &= used - 1) {
            const req = &ep.reqs[@ctz(used)];
            if (req.kind == .recv and req.peer == src and req.seq == seq and !req.done.load(.monotonic)) return req;
        }
        return null;
    }

    fn allocReqLocked(ep: *Endpoint) ?u32 {
        if (ep.reqs_used == std.math.maxInt(u64)) return null;
        const index: u32 = @ctz(~ep.reqs_used);
        if (index >= requests_max) return null;
        ep.reqs_used |= @as(u64, 1) << @intCast(index);
        return index;
    }

    fn freeReqLocked(ep: *Endpoint, index: u32) void {
        std.debug.assert(ep.reqs[index].busy == 0);
        ep.reqs_used &= ~(@as(u64, 1) << @intCast(index));
    }

    fn checkDoneLocked(ep: *Endpoint, req: *Req) void {
        if (req.arrived and req.busy == 0 and req.received == req.buf.len) {
            req.done.store(true, .release);
            ep.cond.broadcast();
        }
    }

    /// Why the op must stop now, or null.
    fn stopReason(net: *Net, ep: *Endpoint, peer: u32, what: []const u8) ?Error {
        if (ep.failed.load(.acquire)) {
            net.mu.lock();
            defer net.mu.unlock();
            return ep.failure.?.err;
        }
        if (ep.canceled.load(.acquire)) return net.fail(ep, error.Canceled, -1, "canceled", .{});
        if (net.stopping.load(.acquire)) return net.fail(ep, error.Canceled, -1, "engine shutting down", .{});
        if (sys.monotonicNs() >= ep.deadline_ns)
            return net.fail(ep, error.Timeout, @intCast(peer), "timed out after {d} ms {s} rank {d}", .{ ep.timeout_ms, what, peer });
        return null;
    }

    // ---- Comm ----

    const comm_vtable = transport.Comm.VTable{ .isend = commIsend, .irecv = commIrecv, .wait = commWait, .irecv_reduce = commIrecvReduce };

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
            if (ep.failure) |f| return f.err;
            const index = allocReqLocked(ep) orelse {
                net.failLocked(ep, error.OutOfMemory, -1, "more than {d} requests in flight", .{requests_max});
                return error.OutOfMemory;
            };
            const seq = ep.send_seq[peer_group];
            ep.send_seq[peer_group] += 1;
            ep.reqs[index] = .{ .kind = .send, .peer = peer, .seq = seq };
            break :blk .{ index, seq };
        };
        net.sendMessage(ep, peer, seq, bytes) catch |err| {
            net.mu.lock();
            defer net.mu.unlock();
            freeReqLocked(ep, index);
            return err;
        };
        ep.reqs[index].done.store(true, .release);
        return .{ .index = index };
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
        if (ep.failure) |f| return f.err;
        const index = allocReqLocked(ep) orelse {
            net.failLocked(ep, error.OutOfMemory, -1, "more than {d} requests in flight", .{requests_max});
            return error.OutOfMemory;
        };
        const seq = ep.recv_seq[peer_group];
        ep.recv_seq[peer_group] += 1;
        const req = &ep.reqs[index];
        req.* = .{ .kind = .recv, .peer = peer, .seq = seq, .buf = bytes, .reduce = reduce_spec };
        net.claimStashLocked(ep, req);
        checkDoneLocked(ep, req);
        // A peer that is gone can't send the rest (what it sent before leaving was stashed).
        if (!req.done.load(.acquire)) {
            const p = &net.peers[peer];
            if (p.down) {
                net.failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} was marked down", .{peer});
            } else if (p.lost and p.lost_protocol) {
                net.failLocked(ep, error.Protocol, @intCast(peer), "rank {d} sent a bad frame", .{peer});
            } else if (p.lost) {
                net.failLocked(ep, error.PeerFailed, @intCast(peer), "rank {d} closed its link", .{peer});
            }
        }
        return .{ .index = index };
    }

    /// Moves stashed chunks of `req`'s message into its buffer. Entries leave the stash under
    /// the lock and are copied with it released, so a big stash copy never stalls other links.
    fn claimStashLocked(net: *Net, ep: *Endpoint, req: *Req) void {
        var claims_max: usize = stash_entries_max;
        while (claims_max > 0) : (claims_max -= 1) {
            const index = for (net.stash.items, 0..) |entry, i| {
                if (entry.op_id == ep.op_id and entry.src == req.peer and entry.seq == req.seq) break i;
            } else return;
            const entry = net.stash.swapRemove(index);
            net.stash_bytes -= entry.data.len;
            net.stash_cond.broadcast();
            if (entry.msg_len != req.buf.len or req.routed + entry.data.len > req.buf.len) {
                net.alloc.free(entry.data);
                net.failLocked(ep, error.Protocol, @intCast(req.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ req.peer, req.seq, entry.msg_len, req.buf.len });
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
        std.debug.assert(request.index < requests_max);
        std.debug.assert(ep.reqs_used & (@as(u64, 1) << @intCast(request.index)) != 0);
        const req = &ep.reqs[request.index];
        // Spin briefly: a small message usually lands within microseconds.
        _ = sys.spinUntil(SpinReq{ .ep = ep, .req = req }, SpinReq.ready);
        net.mu.lock();
        defer net.mu.unlock();
        var wakeups: u64 = 0;
        while (true) : (wakeups += 1) {
            if (req.done.load(.acquire)) {
                freeReqLocked(ep, request.index);
                return;
            }
            if (ep.failure) |f| return f.err;
            if (ep.canceled.load(.acquire)) {
                net.failLocked(ep, error.Canceled, -1, "canceled", .{});
                continue;
            }
            if (net.stopping.load(.acquire)) {
                net.failLocked(ep, error.Canceled, -1, "engine shutting down", .{});
                continue;
            }
            const now = sys.monotonicNs();
            if (now >= ep.deadline_ns) {
                net.failLocked(ep, error.Timeout, @intCast(req.peer), "timed out after {d} ms waiting for message {d} ({d} bytes, {d} arrived) from rank {d}", .{ ep.timeout_ms, req.seq, req.buf.len, req.received, req.peer });
                continue;
            }
            ep.cond.timedWait(&net.mu, ep.deadline_ns - now) catch {};
        }
    }

    // ---- sending ----

    fn sendMessage(net: *Net, ep: *Endpoint, peer: u32, seq: u32, bytes: []const u8) Error!void {
        const link = try net.acquireLink(ep, peer);
        defer net.releaseLink(link);
        const chunk_max: u64 = if (link.tx) |ring| ring.slot_bytes else net.opts.tcp_chunk_bytes;
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
            const payload = bytes[offset..][0..chunk_len];
            if (link.tx) |ring| {
                try net.sendChunkShm(link, ring, ep, &header, payload);
            } else {
                try net.sendChunkTcp(link, ep, &header, payload);
            }
            offset += chunk_len;
            if (offset == bytes.len) return;
        }
        unreachable;
    }

    const SendAbort = struct {
        net: *Net,
        link: *Link,
        ep: *Endpoint,
        pub fn check(self: SendAbort) bool {
            if (self.link.closing.load(.acquire) or self.net.stopping.load(.acquire)) return true;
            return self.ep.failed.load(.acquire) or self.ep.canceled.load(.acquire) or
                sys.monotonicNs() >= self.ep.deadline_ns;
        }
    };

    fn sendChunkTcp(net: *Net, link: *Link, ep: *Endpoint, header: *const wire.FrameHeader, payload: []const u8) Error!void {
        link.write_mu.lock();
        defer link.write_mu.unlock();
        if (link.closing.load(.acquire)) return net.fail(ep, error.PeerFailed, @intCast(link.peer), "link to rank {d} closed", .{link.peer});
        tcp.writeFrame(link.fd, header, payload, SendAbort{ .net = net, .link = link, .ep = ep }) catch |err| {
            // Mid-frame: the stream can't be resumed, so the link goes.
            net.mu.lock();
            defer net.mu.unlock();
            const by_us = !link.closing.load(.acquire);
            net.closeLinkLocked(link);
            if (err == error.Closed) {
                net.failLocked(ep, error.PeerFailed, @intCast(link.peer), "rank {d} closed its link while we sent message {d}", .{ link.peer, header.seq });
            } else if (!by_us) {
                net.failLocked(ep, error.PeerFailed, @intCast(link.peer), "link to rank {d} closed while we sent message {d}", .{ link.peer, header.seq });
            } else if (ep.failure == null) {
                if (ep.canceled.load(.acquire)) {
                    net.failLocked(ep, error.Canceled, -1, "canceled", .{});
                } else {
                    net.failLocked(ep, error.Timeout, @intCast(link.peer), "timed out after {d} ms sending to rank {d} (it stopped reading)", .{ ep.timeout_ms, link.peer });
                }
            }
            return ep.failure.?.err;
        };
    }

    fn sendChunkShm(net: *Net, link: *Link, ring: shm.Ring, ep: *Endpoint, header: *const wire.FrameHeader, payload: []const u8) Error!void {
        link.write_mu.lock();
        defer link.write_mu.unlock();
        std.debug.assert(payload.len <= ring.slot_bytes);
        const abort = SendAbort{ .net = net, .link = link, .ep = ep };
        const index = while (true) {
            if (ring.tryReserve()) |index| break index;
            if (abort.check()) {
                if (link.closing.load(.acquire))
                    return net.fail(ep, error.PeerFailed, @intCast(link.peer), "link to rank {d} closed", .{link.peer});
                return net.stopReason(ep, link.peer, "sending to (ring full)") orelse error.Canceled;
            }
            ring.waitSpace(send_space_wait_ns);
        };
        ring.slotHeader(index).* = header.*;
        @memcpy(ring.slotPayload(index)[0..payload.len], payload);
        ring.publish(index);
    }

    /// A live link to `peer` (dialing it when there is none), with a reference held.
    fn acquireLink(net: *Net, ep: *Endpoint, peer_rank: u32) Error!*Link {
        net.mu.lock();
        const peer = &net.peers[peer_rank];
        const addr, const generation, const want_shm = while (true) {
            if (ep.failure) |f| {
                net.mu.unlock();
                return f.err;
            }
            if (peer.down) {
                net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was marked down", .{peer_rank});
                net.mu.unlock();
                return error.PeerFailed;
            }
            for (peer.links) |maybe| {
                const link = maybe orelse continue;
                if (link.closing.load(.acquire)) continue;
                link.refs += 1;
                net.mu.unlock();
                return link;
            }
            const addr = peer.addr orelse {
                net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} has no data-plane address", .{peer_rank});
                net.mu.unlock();
                return error.PeerFailed;
            };
            const now = sys.monotonicNs();
            if (net.stopping.load(.acquire) or ep.canceled.load(.acquire) or now >= ep.deadline_ns) {
                net.mu.unlock();
                return net.stopReason(ep, peer_rank, "connecting to") orelse error.Canceled;
            }
            if (!peer.dialing) {
                peer.dialing = true;
                break .{ addr, peer.generation, net.wantShm(peer) };
            }
            net.peer_cond.timedWait(&net.mu, ep.deadline_ns - now) catch {};
        };
        net.mu.unlock();

        const remaining_ms: u32 = @intCast(@min(connect_timeout_ms_max, (ep.deadline_ns -| sys.monotonicNs()) / std.time.ns_per_ms + 1));
        const dialed = net.dialLink(peer_rank, addr, want_shm, remaining_ms);

        net.mu.lock();
        peer.dialing = false;
        net.peer_cond.broadcast();
        const link = dialed catch |err| {
            net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "could not connect to rank {d} at {any}: {s}", .{ peer_rank, addr, switch (err) {
                error.Refused => "connection refused",
                error.TimedOut => "timed out",
                error.Rejected => "handshake rejected (cluster id / token / rank mismatch?)",
                error.Protocol => "bad handshake reply",
                else => "unreachable",
            } });
            net.mu.unlock();
            return error.PeerFailed;
        };
        if (generation != peer.generation or !net.installLocked(link)) {
            net.failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was reset while connecting", .{peer_rank});
            net.mu.unlock();
            net.destroyLink(link);
            return error.PeerFailed;
        }
        link.refs = 2; // the link thread and this sender
        net.threads_live += 1;
        net.mu.unlock();
        const thread = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, linkThread, .{link}) catch {
            net.mu.lock();
            net.closeLinkLocked(link);
            net.removeLinkLocked(link);
            link.refs -= 1;
            net.threads_live -= 1;
            net.failLocked(ep, error.OutOfMemory, -1, "could not start a link thread", .{});
            net.mu.unlock();
            net.releaseLink(link);
            return error.OutOfMemory;
        };
        thread.detach();
        return link;
    }

    fn releaseLink(net: *Net, link: *Link) void {
        net.mu.lock();
        std.debug.assert(link.refs > 0);
        link.refs -= 1;
        const last = link.refs == 0;
        net.mu.unlock();
        if (last) net.destroyLink(link);
    }

    fn makeShmName(net: *Net, buf: []u8, peer_rank: u32) []const u8 {
        var prefix_buf: [64]u8 = undefined;
        const prefix = net.shmPrefix(&prefix_buf, net.rank());
        const nonce = @atomicRmw(u32, &net.shm_nonce, .Add, 1, .monotonic);
        const salt: u32 = @truncate(sys.monotonicNs() ^ @intFromPtr(net));
        return std.fmt.bufPrint(buf, "{s}{d}-{x:0>8}{x:0>4}", .{ prefix, peer_rank, salt, nonce & 0xffff }) catch unreachable;
    }

    fn createTxRing(net: *Net, name_buf: []u8, peer_rank: u32) ?struct { ring: shm.Ring, name: []const u8 } {
        const name = net.makeShmName(name_buf, peer_rank);
        const bytes = shm.segmentBytes(net.opts.shm_slot_count, net.opts.shm_slot_bytes);
        const segment = sys.shmCreate(name, bytes) catch |err| {
            sys.logLine("rank {d}: shm segment {s} ({d} bytes) for rank {d} failed ({s}); using tcp", .{ net.rank(), name, bytes, peer_rank, @errorName(err) });
            return null;
        };
        const ring = shm.Ring.create(segment, net.opts.shm_slot_count, net.opts.shm_slot_bytes, net.rank(), net.opts.host_id);
        return .{ .ring = ring, .name = name };
    }

    fn identity(net: *const Net) tcp.Identity {
        return .{
            .rank = net.rank(),
            .world_size_max = net.opts.world_size_max,
            .cluster_id = net.opts.cluster_id,
            .token = net.opts.token,
            .host_id = net.opts.host_id,
        };
    }

    fn dialLink(net: *Net, peer_rank: u32, addr: sys.Address, want_shm: bool, timeout_ms: u32) (tcp.DialError || error{OutOfMemory})!*Link {
        var name_buf: [sys.shm_name_bytes_max]u8 = undefined;
        const tx = if (want_shm) net.createTxRing(&name_buf, peer_rank) else null;
        var keep_tx = false;
        defer if (tx) |t| {
            sys.shmUnlink(t.name);
            if (!keep_tx) t.ring.segment.unmapSegment();
        };
        const offer: tcp.Offer = if (tx) |t| .{ .kind = .shm, .shm_name = t.name } else .{ .kind = .tcp };
        const dialed = try tcp.dial(addr, net.identity(), peer_rank, offer, timeout_ms);
        errdefer sys.closeFd(dialed.fd);
        var rx: ?shm.Ring = null;
        if (dialed.kind == .shm) {
            const name = dialed.shm_name[0..dialed.shm_name_len];
            defer sys.shmUnlink(name); // both sides have it mapped now: nothing stays in /dev/shm
            const segment = sys.shmOpen(name, 0) catch return error.Protocol;
            rx = shm.Ring.attach(segment, peer_rank, null) catch {
                segment.unmapSegment();
                return error.Protocol;
            };
        } else if (want_shm) {
            sys.logLine("rank {d}: rank {d} declined shm; using tcp", .{ net.rank(), peer_rank });
        }
        errdefer if (rx) |r| r.segment.unmapSegment();
        const link = try net.alloc.create(Link);
        link.* = .{ .net = net, .fd = dialed.fd, .peer = peer_rank, .kind = dialed.kind, .tx = if (dialed.kind == .shm) tx.?.ring else null, .rx = rx };
        keep_tx = dialed.kind == .shm;
        tcp.setStreaming(dialed.fd);
        return link;
    }

    /// Adds a handshaken link to its peer's table. False when the peer is down or we stop.
    fn installLocked(net: *Net, link: *Link) bool {
        const peer = &net.peers[link.peer];
        if (net.stopping.load(.acquire) or peer.down) return false;
        var free_slot: ?usize = null;
        for (peer.links, 0..) |maybe, i| {
            if (maybe == null and free_slot == null) free_slot = i;
        }
        if (free_slot == null) {
            // Full (a flapping peer): the oldest goes.
            net.closeLinkLocked(peer.links[0].?);
            net.removeLinkLocked(peer.links[0].?);
            free_slot = 0;
        }
        peer.links[free_slot.?] = link;
        link.generation = peer.generation;
        peer.lost = false;
        net.links_live += 1;
        return true;
    }

    fn removeLinkLocked(net: *Net, link: *Link) void {
        for (&net.peers[link.peer].links) |*slot| {
            if (slot.* == link) slot.* = null;
        }
    }

    fn closeLinkLocked(net: *Net, link: *Link) void {
        _ = net;
        if (link.closing.load(.acquire)) return;
        link.closed_by_us = true;
        link.closing.store(true, .release);
        sys.shutdownBoth(link.fd);
        if (link.rx) |ring| ring.wakeAll();
        if (link.tx) |ring| ring.wakeAll();
    }

    fn destroyLink(net: *Net, link: *Link) void {
        sys.closeFd(link.fd);
        if (link.tx) |ring| ring.segment.unmapSegment();
        if (link.rx) |ring| ring.segment.unmapSegment();
        net.alloc.destroy(link);
    }

    // ---- accepting ----

    fn listenLoop(net: *Net) void {
        while (!net.stopping.load(.acquire)) {
            const accepted = sys.acceptTimeout(net.listen_fd, 100) catch {
                sys.sleepNs(10 * std.time.ns_per_ms);
                continue;
            } orelse continue;
            net.mu.lock();
            const admit = !net.stopping.load(.acquire) and net.links_live < links_max;
            if (admit) {
                net.links_live += 1;
                net.threads_live += 1;
            }
            net.mu.unlock();
            if (!admit) {
                sys.logLine("rank {d}: refused connection from {any}: {d} links open", .{ net.rank(), accepted.addr, links_max });
                sys.closeFd(accepted.fd);
                continue;
            }
            const thread = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, acceptThread, .{ net, accepted }) catch {
                sys.closeFd(accepted.fd);
                net.mu.lock();
                net.links_live -= 1;
                net.threads_live -= 1;
                net.threads_cond.broadcast();
                net.mu.unlock();
                continue;
            };
            thread.detach();
        }
    }

    fn threadExit(net: *Net) void {
        net.mu.lock();
        net.threads_live -= 1;
        net.threads_cond.broadcast();
        net.mu.unlock();
    }

    fn rejectAccepted(net: *Net, accepted: sys.Accepted, comptime fmt: []const u8, args: anytype) void {
        sys.logLine("rank {d}: rejected connection from {any}: " ++ fmt, .{ net.rank(), accepted.addr } ++ args);
        sys.closeFd(accepted.fd);
        net.mu.lock();
        net.links_live -= 1;
        net.mu.unlock();
    }

    fn acceptThread(net: *Net, accepted: sys.Accepted) void {
        defer net.threadExit();
        var hello: tcp.Hello = undefined;
        tcp.readHello(accepted.fd, &hello, &net.stopping) catch |err| {
            return net.rejectAccepted(accepted, "bad handshake ({s})", .{@errorName(err)});
        };
        const h = hello.header;
        const status: wire.AckStatus = if (h.dst_rank != net.rank() or h.src_rank >= net.opts.world_size_max or
            h.src_rank == net.rank() or h.world_size_max != net.opts.world_size_max)
            .wrong_rank
        else if (!std.mem.eql(u8, hello.clusterId(), net.opts.cluster_id))
            .bad_cluster
        else if (!tcp.secretEqual(hello.token(), net.opts.token))
            .bad_token
        else if (net.stopping.load(.acquire))
            .shutting_down
        else
            .ok;
        if (status != .ok) {
            tcp.sendAck(accepted.fd, status, net.rank(), .tcp, "");
            return net.rejectAccepted(accepted, "{s} (claims rank {d} -> {d}, world {d})", .{ @tagName(status), h.src_rank, h.dst_rank, h.world_size_max });
        }
        const src = h.src_rank;
        var rx: ?shm.Ring = null;
        var tx: ?shm.Ring = null;
        var name_buf: [sys.shm_name_bytes_max]u8 = undefined;
        var tx_name: []const u8 = "";
        if (hello.kind == .shm and net.opts.mode != .tcp) shm_setup: {
            const segment = sys.shmOpen(hello.shmName(), 0) catch break :shm_setup;
            rx = shm.Ring.attach(segment, src, h.host_id) catch {
                segment.unmapSegment();
                break :shm_setup;
            };
            if (net.createTxRing(&name_buf, src)) |created| {
                tx = created.ring;
                tx_name = created.name;
            } else {
                rx.?.segment.unmapSegment();
                rx = null;
            }
        }
        const kind: wire.LinkKind = if (tx != null) .shm else .tcp;
        const link = net.alloc.create(Link) catch {
            if (tx) |r| r.segment.unmapSegment();
            if (rx) |r| r.segment.unmapSegment();
            if (tx != null) sys.shmUnlink(tx_name);
            return net.rejectAccepted(accepted, "out of memory", .{});
        };
        link.* = .{ .net = net, .fd = accepted.fd, .peer = src, .kind = kind, .tx = tx, .rx = rx };
        tcp.sendAck(accepted.fd, .ok, net.rank(), kind, tx_name);
        tcp.setStreaming(accepted.fd);

        net.mu.lock();
        net.links_live -= 1; // installLocked counts it again
        if (!net.installLocked(link)) {
            net.mu.unlock();
            sys.logLine("rank {d}: dropped link from rank {d} (down or shutting down)", .{ net.rank(), src });
            if (tx != null) sys.shmUnlink(tx_name);
            net.destroyLink(link);
            return;
        }
        link.refs = 1;
        net.threads_live += 1; // linkRun's own exit accounting
        net.mu.unlock();
        linkRun(link);
    }

    // ---- receiving ----

    fn linkThread(link: *Link) void {
        linkRun(link);
    }

    fn linkRun(link: *Link) void {
        const net = link.net;
        const outcome = if (link.rx) |ring| net.rxShm(link, ring) else net.rxTcp(link);
        net.mu.lock();
        net.removeLinkLocked(link);
        const by_us = link.closed_by_us;
        net.closeLinkLocked(link); // senders blocked on it (ring full) give up now
        if (!by_us or outcome == .protocol) net.linkLostLocked(link, outcome);
        std.debug.assert(link.refs > 0);
        link.refs -= 1;
        const last = link.refs == 0;
        net.links_live -= 1;
        net.mu.unlock();
        if (last) net.destroyLink(link);
        net.threadExit();
    }

    const RxOutcome = enum { closed, protocol };

    /// The link died under us: ops waiting to receive from that peer fail now, and later
    /// receives from it fail at once until a new link comes up.
    fn linkLostLocked(net: *Net, link: *Link, outcome: RxOutcome) void {
        const peer = &net.peers[link.peer];
        if (link.generation != peer.generation) return;
        var others = false;
        for (peer.links) |maybe| {
            if (maybe) |other| others = others or !other.closing.load(.acquire);
        }
        if (!others) {
            peer.lost = true;
            peer.lost_protocol = outcome == .protocol;
        }
        if (outcome == .protocol) {
            sys.logLine("rank {d}: protocol error on link from rank {d}: closed it", .{ net.rank(), link.peer });
        }
        for (net.endpoints) |maybe| {
            const ep = maybe orelse continue;
            var used = ep.reqs_used;
            while (used != 0) : (used &= used - 1) {
                const req = &ep.reqs[@ctz(used)];
                if (req.kind != .recv or req.peer != link.peer or req.done.load(.monotonic)) continue;
                if (outcome == .protocol) {
                    net.failLocked(ep, error.Protocol, @intCast(link.peer), "rank {d} sent a bad frame", .{link.peer});
                } else {
                    net.failLocked(ep, error.PeerFailed, @intCast(link.peer), "rank {d} closed its link (message {d}: {d} of {d} bytes arrived)", .{ link.peer, req.seq, req.received, req.buf.len });
                }
                break;
            }
        }
    }

    const RxIdle = struct {
        net: *Net,
        link: *Link,
        pub fn check(self: RxIdle) bool {
            return self.link.closing.load(.acquire) or self.net.stopping.load(.acquire);
        }
    };

    fn rxTcp(net: *Net, link: *Link) RxOutcome {
        var header: wire.FrameHeader = undefined;
        var frames: u64 = 0;
        while (true) : (frames += 1) {
            tcp.readExact(link.fd, std.mem.asBytes(&header), RxIdle{ .net = net, .link = link }) catch return .closed;
            header.validate(link.peer, net.opts.tcp_chunk_bytes) catch return .protocol;
            switch (net.route(link, &header, false)) {
                .direct => |d| {
                    const done = net.readDirect(link, d.ep, d.dest);
                    net.finishDirect(d.ep, d.req, done, done == d.dest.len);
                    if (done < d.dest.len) {
                        if (link.closing.load(.acquire)) return .closed;
                        net.discard(link, d.dest.len - done) catch return .closed;
                    }
                },
                .stash => |buf| {
                    tcp.readExact(link.fd, buf, RxIdle{ .net = net, .link = link }) catch {
                        net.dropStashBuffer(buf);
                        return .closed;
                    };
                    net.finishStash(link, &header, buf);
                },
                .discard => net.discard(link, header.chunk_len) catch return .closed,
            }
        }
    }

    /// Reads into a posted buffer until done, the op abandons it, or the link fails.
    fn readDirect(net: *Net, link: *Link, ep: *Endpoint, dest: []u8) usize {
        _ = net;
        var done: usize = 0;
        while (done < dest.len) {
            if (ep.abandoned.load(.acquire)) break;
            done += sys.recvSome(link.fd, dest[done..]) catch |err| switch (err) {
                error.WouldBlock => if (link.closing.load(.acquire)) break else continue,
                else => break,
            };
        }
        return done;
    }

    fn discard(net: *Net, link: *Link, len: u64) tcp.IoError!void {
        var scratch: [16 * 1024]u8 = undefined;
        var left = len;
        while (left > 0) {
            const n: usize = @intCast(@min(left, scratch.len));
            try tcp.readExact(link.fd, scratch[0..n], RxIdle{ .net = net, .link = link });
            left -= n;
        }
    }

    fn rxShm(net: *Net, link: *Link, ring: shm.Ring) RxOutcome {
        var frames: u64 = 0;
        while (true) : (frames += 1) {
            if (link.closing.load(.acquire) or net.stopping.load(.acquire)) return .closed;
            const index = (ring.peek() catch return .protocol) orelse {
                ring.waitData(rx_idle_wait_ns);
                if ((ring.peek() catch return .protocol) == null and sys.peerHungUp(link.fd)) return .closed;
                continue;
            };
            const header = ring.slotHeader(index).*;
            header.validate(link.peer, ring.slot_bytes) catch return .protocol;
            const payload = ring.slotPayload(index)[0..header.chunk_len];
            switch (net.route(link, &header, true)) {
                .direct => |d| {
                    d.req.deliver(header.offset, payload);
                    net.finishDirect(d.ep, d.req, d.dest.len, true);
                },
                .stash => |buf| {
                    @memcpy(buf, payload);
                    net.finishStash(link, &header, buf);
                },
                .discard => {},
            }
            ring.release(index);
        }
    }

    /// Where one frame's payload goes. Waits while the stash is full (backpressure).
    fn route(net: *Net, link: *Link, header: *const wire.FrameHeader, reduce_direct: bool) Target {
        net.mu.lock();
        defer net.mu.unlock();
        var waits: u64 = 0;
        var waiting_since_ns: u64 = 0;
        while (true) : (waits += 1) {
            if (link.closing.load(.acquire) or net.stopping.load(.acquire)) return .discard;
            const registered = net.findEndpointLocked(header.op_id) != null;
            if (!registered and waits > 0 and sys.monotonicNs() -| waiting_since_ns > orphan_ttl_ns) {
                // A frame of an op this rank never runs must not block the link forever.
                sys.logLine("rank {d}: dropping frames of op {d} from rank {d}: the op was not posted here for {d} s", .{ net.rank(), header.op_id, link.peer, orphan_ttl_ns / std.time.ns_per_s });
                net.markFinishedLocked(header.op_id);
                return .discard;
            }
            if (waits == 0) waiting_since_ns = sys.monotonicNs();
            if (net.findEndpointLocked(header.op_id)) |ep| {
                if (ep.abandoned.load(.acquire)) return .discard;
                if (findRecvLocked(ep, link.peer, header.seq)) |req| routed: {
                    if (req.reduce != null and !reduce_direct) break :routed; // via the stash (TCP reads in place)
                    if (header.msg_len != req.buf.len or req.routed + header.chunk_len > req.buf.len) {
                        net.failLocked(ep, error.Protocol, @intCast(link.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ link.peer, header.seq, header.msg_len, req.buf.len });
                        return .discard;
                    }
                    req.routed += header.chunk_len;
                    req.busy += 1;
                    return .{ .direct = .{ .ep = ep, .req = req, .dest = req.buf[header.offset..][0..header.chunk_len] } };
                }
            } else if (net.finishedLocked(header.op_id)) {
                return .discard;
            }
            if (net.stash.items.len + net.stash_pending < stash_entries_max and net.stash_bytes + header.chunk_len <= net.opts.stash_bytes_max) {
                if (net.alloc.alloc(u8, header.chunk_len)) |buf| {
                    net.stash_pending += 1;
                    net.stash_bytes += buf.len;
                    net.stash_full_logged = false;
                    return .{ .stash = buf };
                } else |_| {}
            }
            if (net.evictOrphansLocked() > 0) continue;
            if (!net.stash_full_logged) {
                net.stash_full_logged = true;
                sys.logLine("rank {d}: stash full ({d} bytes, {d} entries): link from rank {d} waits for op {d} to be posted", .{ net.rank(), net.stash_bytes, net.stash.items.len, link.peer, header.op_id });
            }
            net.stash_cond.timedWait(&net.mu, rx_idle_wait_ns) catch {};
        }
    }

    fn finishDirect(net: *Net, ep: *Endpoint, req: *Req, written: usize, complete: bool) void {
        net.mu.lock();
        defer net.mu.unlock();
        std.debug.assert(req.busy > 0);
        req.busy -= 1;
        if (complete) {
            req.received += written;
            req.arrived = true;
            checkDoneLocked(ep, req);
        }
        ep.cond.broadcast();
    }

    fn dropStashBuffer(net: *Net, buf: []u8) void {
        net.mu.lock();
        defer net.mu.unlock();
        net.stash_pending -= 1;
        net.stash_bytes -= buf.len;
        net.alloc.free(buf);
        net.stash_cond.broadcast();
    }

    fn finishStash(net: *Net, link: *Link, header: *const wire.FrameHeader, buf: []u8) void {
        net.mu.lock();
        defer net.mu.unlock();
        net.stash_pending -= 1;
        // The receive may have been posted while we copied: hand the chunk over now.
        if (net.findEndpointLocked(header.op_id)) |ep| {
            if (!ep.abandoned.load(.acquire)) {
                if (findRecvLocked(ep, link.peer, header.seq)) |req| {
                    net.stash_bytes -= buf.len;
                    net.stash_cond.broadcast();
                    defer net.alloc.free(buf);
                    if (header.msg_len != req.buf.len or req.routed + buf.len > req.buf.len) {
                        net.failLocked(ep, error.Protocol, @intCast(link.peer), "rank {d} sent message {d} of {d} bytes, expected {d}", .{ link.peer, header.seq, header.msg_len, req.buf.len });
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
            .src = link.peer,
            .seq = header.seq,
            .msg_len = header.msg_len,
            .offset = header.offset,
            .data = buf,
            .born_ns = sys.monotonicNs(),
        });
    }

    fn dropStashLocked(net: *Net, index: usize) void {
        const entry = net.stash.swapRemove(index);
        net.stash_bytes -= entry.data.len;
        net.alloc.free(entry.data);
    }

    /// Drops stashed frames of ops this rank has not registered for orphan_ttl_ns.
    fn evictOrphansLocked(net: *Net) u32 {
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
};
