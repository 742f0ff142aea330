//! Net: one rank's data plane, and its endpoint layer. Each op registers an `Endpoint` (op id
//! + group); `Endpoint.comm()` is the `transport.Comm` the algorithms run on. Below it:
//!   links.zig      the link layer (peers, listener, dial / accept, handshake, liveness)
//!   link_kind.zig  the table of operations every link kind implements; kinds.zig lists them
//!                  (kind_tcp.zig, kind_shm.zig)
//!   boards.zig     the same-host boards the board backend runs on
//!
//! Receiving: each link's receive thread hands every frame to this layer (link_kind.Receiver),
//! which routes it by (op id, source rank, message sequence): straight into a posted receive
//! buffer, else into a bounded stash that irecv() claims later (net_rx.zig). A full stash stops the link's
//! thread (backpressure through TCP / the ring). Sending (net_tx.zig) is synchronous on the op's thread
//! (isend returns once the bytes are in the kernel or the ring); a frame is one chunk of a
//! message, so big messages interleave with other ops.
//! Failures: a link that closes fails the ops waiting on that peer (PeerFailed naming it); every
//! wait is bounded by the op's deadline and wakes on cancel.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const transport = @import("transport.zig");
const arena = @import("arena.zig");
const link_kind = @import("link_kind.zig");
const kinds = @import("kinds.zig");
const kind_verbs = @import("kind_verbs.zig");
const verbs = @import("verbs.zig");
const verbs_gpu = @import("verbs_gpu.zig");
const links_mod = @import("links.zig");
const traffic_mod = @import("traffic.zig");
const boards_mod = @import("boards.zig");
const rx_mod = @import("net_rx.zig");
const tx_mod = @import("net_tx.zig");

pub const Error = transport.Error;
pub const world_size_max = links_mod.world_size_max;
const GroupSet = std.StaticBitSet(world_size_max);
pub const endpoints_max = 256;
pub const links_max = links_mod.links_max;
const EndpointMask = std.meta.Int(.unsigned, endpoints_max);
const finished_ids_max = 256;
pub const stash_entries_max = 1 << 14;
pub const stash_bytes_default: u64 = 256 << 20;
/// Stashed frames of an op this rank never registers are dropped after this long.
pub const orphan_ttl_ns: u64 = 30 * std.time.ns_per_s;
pub const stash_wait_ns: u64 = 100 * std.time.ns_per_ms;
pub const requests_max = transport.requests_in_flight_max;

comptime {
    std.debug.assert(requests_max <= 64); // reqs_used is a u64 mask
}

/// $MOONRING_TRANSPORT: auto, or the name of one link kind (kinds.zig).
pub const Mode = kinds.Mode;
pub const BoardTeam = boards_mod.BoardTeam;

pub const Options = struct {
    rank: u32,
    world_size_max: u32,
    cluster_id: []const u8,
    token: []const u8 = "",
    listen: sys.Address,
    mode: Mode = .auto,
    /// Make a board (MOONRING_BOARD; every rank of a host must agree). Never with mode tcp.
    board: bool = true,
    host_id: u64,
    stash_bytes_max: u64 = stash_bytes_default,
    shm_slot_count: u32 = @import("shm.zig").slot_count_default,
    shm_slot_bytes: u32 = @import("shm.zig").slot_bytes_default,
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

pub const Req = struct {
    kind: enum { send, recv } = .recv,
    peer: u32 = 0,
    seq: u32 = 0,
    buf: []u8 = &.{},
    /// Bytes claimed by routed frames (catches overlapping / duplicate frames).
    routed: u64 = 0,
    received: u64 = 0,
    arrived: bool = false,
    /// Receive threads writing into `buf` right now; close() waits for 0.
    busy: u32 = 0,
    done: std.atomic.Value(bool) = .init(false),
    /// reduce each chunk into buf instead of copying it.
    reduce: ?transport.ReduceSpec = null,

    /// Puts one chunk at `offset` of the message into buf (copy, or reduce with `mine`).
    pub fn deliver(req: *const Req, offset: u64, data: []const u8) void {
        std.debug.assert(offset + data.len <= req.buf.len);
        const dst = req.buf[offset..][0..data.len];
        if (req.reduce) |r| {
            r.apply(r.dtype, r.redop, dst, r.mine[offset..][0..data.len], data);
        } else {
            @memcpy(dst, data);
        }
    }
};

/// A verbs link held for a GPUDirect op (backend/verbs_direct.zig).
pub const VerbsHold = struct { link: *links_mod.Link, channel: *verbs.Channel };

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
    /// links.peers_changed when prepare() ran.
    peers_changed: u64 = 0,

    pub fn comm(self: *Endpoint) transport.Comm {
        std.debug.assert(self.registered);
        return .{ .context = self, .vtable = &Net.comm_vtable, .rank = self.group_rank, .size = self.group_size };
    }

    /// An op's blocked send asks this whether to give up.
    fn mustStop(self: *const Endpoint) bool {
        return self.failed.load(.acquire) or self.canceled.load(.acquire) or
            self.net.links.stopping.load(.acquire) or sys.monotonicNs() >= self.deadline_ns;
    }

    fn abortCheck(context: *const anyopaque) bool {
        const self: *const Endpoint = @ptrCast(@alignCast(context));
        return self.mustStop();
    }

    pub fn abort(self: *const Endpoint) link_kind.Abort {
        return .{ .context = self, .check_fn = abortCheck };
    }
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

pub const Net = struct {
    alloc: std.mem.Allocator,
    opts: Options,
    cluster_buf: [wire.cluster_id_bytes_max]u8 = undefined,
    token_buf: [wire.token_bytes_max]u8 = undefined,
    cluster_hash: u64,
    port: u16 = 0,

    /// The data plane's one lock: endpoints, stash, and (links.zig) peers and links.
    mu: std.Thread.Mutex = .{},
    links: links_mod.Links = undefined,
    endpoints: [endpoints_max]?*Endpoint = [_]?*Endpoint{null} ** endpoints_max,
    /// Bit i: endpoints[i] is registered.
    endpoints_used: EndpointMask = 0,
    finished: [finished_ids_max]u64 = [_]u64{0} ** finished_ids_max,
    finished_next: u32 = 0,
    finished_count: u32 = 0,
    stash: std.ArrayListUnmanaged(StashEntry) = .empty,
    stash_bytes: u64 = 0,
    /// Stash buffers handed to receive threads and not yet appended (capacity is reserved).
    stash_pending: u32 = 0,
    stash_full_logged: bool = false,
    stash_cond: std.Thread.Condition = .{},
    boards: boards_mod.Boards = .{},
    /// Peers' shared buffers this rank has mapped (board ops read them in place).
    peer_maps: arena.PeerMaps = .{},
    /// The token-less multi-host warning was logged.
    tokenless_warned: bool = false,
    name_prefix_buf: [64]u8 = undefined,
    name_prefix_len: usize = 0,
    /// Bytes sent to / received from each peer, by link kind (metrics).
    traffic: traffic_mod.Traffic(world_size_max) = .{},

    pub fn init(alloc: std.mem.Allocator, opts_in: Options) !*Net {
        if (opts_in.world_size_max == 0 or opts_in.world_size_max > world_size_max) return error.BadWorldSize;
        if (opts_in.rank >= opts_in.world_size_max) return error.BadRank;
        if (opts_in.cluster_id.len > wire.cluster_id_bytes_max) return error.ClusterIdTooLong;
        if (opts_in.token.len > wire.token_bytes_max) return error.TokenTooLong;
        if (opts_in.tcp_chunk_bytes == 0 or opts_in.tcp_chunk_bytes > wire.chunk_bytes_max) return error.BadChunk;
        const net = try alloc.create(Net);
        errdefer alloc.destroy(net);
        net.* = .{
            .alloc = alloc,
            .opts = opts_in,
            .cluster_hash = std.hash.Wyhash.hash(0, opts_in.cluster_id),
        };
        try net.stash.ensureTotalCapacity(alloc, stash_entries_max);
        errdefer net.stash.deinit(alloc);
        @memcpy(net.cluster_buf[0..opts_in.cluster_id.len], opts_in.cluster_id);
        @memcpy(net.token_buf[0..opts_in.token.len], opts_in.token);
        net.opts.cluster_id = net.cluster_buf[0..opts_in.cluster_id.len];
        net.opts.token = net.token_buf[0..opts_in.token.len];
        net.name_prefix_len = net.shmPrefix(&net.name_prefix_buf, net.rank()).len;
        net.sweepOwnSegments();
        try net.links.init(alloc, &net.mu, net.sink(), net.linkOptions());
        errdefer net.links.deinit();
        net.port = net.links.port;
        if (opts_in.mode != .tcp and opts_in.board) {
            try net.boards.create(net.rank(), net.namePrefix(), net.port, sys.monotonicNs() ^ @intFromPtr(net));
        }
        errdefer net.boards.deinit();
        try net.links.listen();
        return net;
    }

    fn linkOptions(net: *Net) links_mod.Options {
        return .{
            .identity = .{
                .rank = net.opts.rank,
                .world_size_max = net.opts.world_size_max,
                .cluster_id = net.opts.cluster_id,
                .token = net.opts.token,
                .host_id = net.opts.host_id,
            },
            .listen = net.opts.listen,
            .env = .{
                .alloc = net.alloc,
                .rank = net.opts.rank,
                .world_size_max = net.opts.world_size_max,
                .host_id = net.opts.host_id,
                .forced = kinds.forcedName(net.opts.mode),
                .name_prefix = net.namePrefix(),
                .tcp_chunk_bytes = net.opts.tcp_chunk_bytes,
                .shm_slot_count = net.opts.shm_slot_count,
                .shm_slot_bytes = net.opts.shm_slot_bytes,
            },
        };
    }

    /// Stops the listener and every link; every endpoint must be closed already.
    pub fn deinit(net: *Net) void {
        net.mu.lock();
        for (net.endpoints) |slot| std.debug.assert(slot == null);
        net.stash_cond.broadcast();
        net.mu.unlock();
        net.links.deinit();
        net.mu.lock();
        for (net.stash.items) |entry| net.alloc.free(entry.data);
        net.stash.deinit(net.alloc);
        net.mu.unlock();
        net.boards.deinit();
        net.peer_maps.deinit();
        net.sweepOwnSegments();
        net.alloc.destroy(net);
    }

    pub fn rank(net: *const Net) u32 {
        return net.opts.rank;
    }

    fn shmPrefix(net: *const Net, buf: []u8, owner: u32) []const u8 {
        return std.fmt.bufPrint(buf, "moonring-{x:0>16}-{d}-", .{ net.cluster_hash, owner }) catch unreachable;
    }

    /// Names of this rank's shared segments (rings, board) start with it.
    fn namePrefix(net: *const Net) []const u8 {
        return net.name_prefix_buf[0..net.name_prefix_len];
    }

    fn sweepOwnSegments(net: *Net) void {
        const removed = sys.shmUnlinkPrefix(net.namePrefix(), boards_mod.keepLiveBoard);
        if (removed > 0) sys.logLine("rank {d}: removed {d} stale shm segment(s)", .{ net.rank(), removed });
    }

    // ---- boards ----

    /// The boards of `ep`'s group when every peer of it is on this host with a live board
    /// (else false: the op runs over the links). Maps boards on first use and again after a
    /// peer restarted.
    pub fn boardTeam(net: *Net, ep: *const Endpoint, team: *BoardTeam) bool {
        return net.boardTeamOf(ep.group[0..ep.group_size], team);
    }

    /// boardTeam() for a group (global ranks, ascending) before its endpoint is open.
    /// Without the lock when `team` was filled for this group and nothing it depends on
    /// changed since (teamEpoch): the lock's locked instructions wait for the previous op's
    /// stores to the peers' lines (E63).
    pub fn boardTeamOf(net: *Net, group: []const u32, team: *BoardTeam) bool {
        if (net.boards.own == null) return false;
        if (team.current(group, net.teamEpoch())) return true;
        net.mu.lock();
        defer net.mu.unlock();
        team.filled_ranks = 0;
        if (!net.boards.teamLocked(net.rank(), group, &net.links.peers, net, boardPeer, shmPrefix, team)) return false;
        team.markFilled(group, net.teamEpoch()); // changes only under the lock we hold
        return true;
    }

    /// Grows whenever a board team lookup could answer differently: a peer set, marked down,
    /// lost or back, a peer's board mapped again.
    fn teamEpoch(net: *Net) u64 {
        return net.links.peers_changed.load(.acquire) +% net.boards.reopened.load(.acquire);
    }

    /// Whether a peer's board is reachable: on this host (MOONRING_TRANSPORT=shm: any peer).
    fn boardPeer(net: *const Net, peer: *const links_mod.Peer) bool {
        if (net.opts.mode == .shm) return true;
        return net.opts.mode == .auto and peer.host_id != 0 and peer.host_id == net.opts.host_id;
    }

    /// Whether every rank of `group` (global ranks) is on this host, as setPeer described them.
    pub fn sameHost(net: *Net, group: []const u32) bool {
        if (net.opts.host_id == 0) return false;
        net.mu.lock();
        defer net.mu.unlock();
        for (group) |g| {
            if (g == net.rank()) continue;
            if (net.links.peers[g].host_id != net.opts.host_id) return false;
        }
        return true;
    }

    // ---- peers ----

    /// Where `peer` listens and which host it is on. Resets its links when anything changed
    /// or it was down / lost (a rejoined rank).
    pub fn setPeer(net: *Net, peer_rank: u32, addr: sys.Address, host_id: u64) void {
        net.mu.lock();
        defer net.mu.unlock();
        if (net.opts.token.len == 0 and host_id != net.opts.host_id and !net.tokenless_warned) {
            // The control plane warns at start too (serve without MOONRING_TOKEN); this is for
            // every embedder of the library.
            net.tokenless_warned = true;
            sys.logLine("rank {d}: SECURITY WARNING: the data plane has no token and rank {d} is on another host: anything that reaches port {d} can join as a rank (set MOONRING_TOKEN; launch makes one)", .{ net.rank(), peer_rank, net.port });
        }
        _ = net.links.setPeerLocked(peer_rank, addr, host_id);
    }

    /// Closes the peer's links and fails every op whose group contains it, at once.
    pub fn peerDown(net: *Net, peer_rank: u32) void {
        net.mu.lock();
        defer net.mu.unlock();
        net.links.peerDownLocked(peer_rank);
        for (net.endpoints) |maybe| {
            const ep = maybe orelse continue;
            if (!ep.group_set.isSet(peer_rank)) continue;
            failLocked(ep, error.PeerFailed, @intCast(peer_rank), "rank {d} was marked down", .{peer_rank});
        }
    }

    /// Live links by kind (tests and diagnostics).
    pub fn linkCounts(net: *Net) struct { tcp: u32, shm: u32, verbs: u32 } {
        net.mu.lock();
        defer net.mu.unlock();
        const counts = net.links.linkCountsLocked();
        return .{ .tcp = counts[kindIndex("tcp")], .shm = counts[kindIndex("shm")], .verbs = counts[kindIndex("verbs")] };
    }

    /// This rank's data-plane links as JSON for GET /cluster: the transport of each peer it has
    /// a link to, and whether RDMA verbs is in use here (or why not). Truncated to `buf`.
    pub fn linksJson(net: *Net, buf: []u8) []const u8 {
        var stream = std.io.fixedBufferStream(buf);
        const w = stream.writer();
        const verbs_status = kind_verbs.statusCopy();
        w.print("{{\"rank\":{d},\"verbs\":{{\"usable\":{},\"detail\":", .{ net.rank(), verbs_status.usable }) catch return stream.getWritten();
        std.json.encodeJsonString(verbs_status.message(), .{}, w) catch return stream.getWritten();
        w.print(",\"rendezvous_direct_bytes\":{d},\"rendezvous_staged_bytes\":{d},\"gpu\":", .{ kind_verbs.rendezvous_direct_bytes.load(.monotonic), kind_verbs.rendezvous_staged_bytes.load(.monotonic) }) catch return stream.getWritten();
        const gpu_status = verbs_gpu.statusCopy();
        std.json.encodeJsonString(gpu_status.message(), .{}, w) catch return stream.getWritten();
        w.print(",\"gpu_direct_bytes\":{d},\"gpu_registrations\":{d},\"devices\":[", .{ verbs_gpu.direct_bytes.load(.monotonic), verbs_gpu.registrations.load(.monotonic) }) catch return stream.getWritten();
        var devices: [16]verbs.buffers.DeviceBytes = undefined;
        for (devices[0..verbs.buffers.deviceBytes(&devices)], 0..) |d, i| {
            w.print("{s}{{\"name\":\"{s}\",\"bytes\":{d}}}", .{ if (i == 0) "" else ",", d.dev.name(), d.bytes }) catch return stream.getWritten();
        }
        w.writeAll("]},\"links\":[") catch return stream.getWritten();
        net.mu.lock();
        defer net.mu.unlock();
        var first = true;
        for (0..net.links.peers.len) |p| {
            const mask = net.links.peerKindsLocked(@intCast(p));
            if (mask == 0) continue;
            w.print("{s}{{\"peer\":{d},\"transport\":", .{ if (first) "" else ",", p }) catch return stream.getWritten();
            first = false;
            // One kind per peer; two only while a link is being replaced (either is right).
            var name: []const u8 = "";
            inline for (kinds.all, 0..) |kind, i| if (mask & (1 << i) != 0) {
                name = kind.name;
            };
            w.print("\"{s}\"}}", .{name}) catch return stream.getWritten();
        }
        w.writeAll("]}") catch return stream.getWritten();
        return stream.getWritten();
    }

    /// The verbs channel of this rank's link to global rank `peer`, with the link held until
    /// releaseVerbs; null when that link is another kind or none can be made.
    pub fn acquireVerbs(net: *Net, ep: *Endpoint, peer: u32) ?VerbsHold {
        const link = switch (net.links.acquire(peer, ep.deadline_ns, ep.abort())) {
            .link => |l| l,
            .failed => return null,
        };
        if (link.ops().id != @intFromEnum(wire.LinkKind.verbs)) {
            net.links.release(link);
            return null;
        }
        return .{ .link = link, .channel = @ptrCast(@alignCast(link.state)) };
    }

    pub fn releaseVerbs(net: *Net, hold: VerbsHold) void {
        net.links.release(hold.link);
    }

    /// Connections the listener took so far, and threads of the link layer still running
    /// (handshakes, receive loops): tests wait for strangers to be dealt with.
    pub fn acceptActivity(net: *Net) struct { accepted: u64, threads: u32 } {
        net.mu.lock();
        defer net.mu.unlock();
        return .{ .accepted = net.links.accepted_total, .threads = net.links.threads_live };
    }

    fn kindIndex(comptime name: []const u8) usize {
        inline for (kinds.all, 0..) |kind, i| if (comptime std.mem.eql(u8, kind.name, name)) return i;
        @compileError("no link kind " ++ name);
    }

    // ---- endpoints ----

    /// Registers an op. `group[i]` = global rank of group rank i (ascending).
    pub fn open(net: *Net, ep: *Endpoint, op_id: u64, group: []const u32, group_rank: u32, deadline_ns: u64, timeout_ms: u32) error{ TooManyOps, DuplicateOp }!void {
        net.prepare(ep, op_id, group, group_rank, deadline_ns, timeout_ms);
        return net.register(ep);
    }

    /// open()'s first half: the endpoint's fields, without the lock. An op that may finish on
    /// the board alone (lanes) registers only if it has to wait (register()), so the peers'
    /// failures (peerDown) and the engine's cancel reach it from then on.
    pub fn prepare(net: *Net, ep: *Endpoint, op_id: u64, group: []const u32, group_rank: u32, deadline_ns: u64, timeout_ms: u32) void {
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
        ep.peers_changed = net.links.peers_changed.load(.acquire);
        @memset(ep.send_seq[0..group.len], 0);
        @memset(ep.recv_seq[0..group.len], 0);
        for (group, 0..) |g, i| {
            std.debug.assert(g < net.opts.world_size_max);
            std.debug.assert(i == 0 or group[i - 1] < g);
            ep.group[i] = g;
            ep.group_set.set(g);
        }
    }

    /// open()'s second half: from here on peerDown() fails the op and close() must be called.
    pub fn register(net: *Net, ep: *Endpoint) error{ TooManyOps, DuplicateOp }!void {
        std.debug.assert(!ep.registered);
        const op_id = ep.op_id;
        net.mu.lock();
        defer net.mu.unlock();
        // Only the registered endpoints are looked at (E16: copying and scanning all 256 was
        // ~15% of an 8-byte board op).
        if (net.findEndpointLocked(op_id) != null) return error.DuplicateOp;
        if (net.endpoints_used == std.math.maxInt(EndpointMask)) return error.TooManyOps;
        const slot: usize = @ctz(~net.endpoints_used);
        std.debug.assert(net.endpoints[slot] == null);
        net.endpoints_used |= @as(EndpointMask, 1) << @intCast(slot);
        ep.endpoint_index = @intCast(slot);
        // An id reused after it finished here: frames for it are welcome again.
        for (net.finished[0..net.finished_count]) |*id| {
            if (id.* == op_id) id.* = 0;
        }
        // A peer of the group marked down since prepare() fails the op, as peerDown() would
        // have had it been registered then (peerDownLocked bumps links.peers_changed).
        if (net.links.peers_changed.load(.acquire) != ep.peers_changed) {
            for (ep.group[0..ep.group_size]) |g| {
                if (g != net.rank() and net.links.peers[g].down) failLocked(ep, error.PeerFailed, @intCast(g), "rank {d} was marked down", .{g});
            }
        }
        ep.registered = true;
        net.endpoints[slot] = ep;
    }

    /// Unregisters an op: no receive thread writes into its buffers once this returns; frames
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
            // Receive threads notice `abandoned` within tcp.io_poll_ms.
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
    pub fn markFinishedLocked(net: *Net, op_id: u64) void {
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

    pub fn failLocked(ep: *Endpoint, err: Error, peer: i32, comptime fmt: []const u8, args: anytype) void {
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
        failLocked(ep, err, peer, fmt, args);
        return ep.failure.?.err;
    }

    pub fn findEndpointLocked(net: *Net, op_id: u64) ?*Endpoint {
        var used = net.endpoints_used;
        while (used != 0) : (used &= used - 1) {
            const ep = net.endpoints[@ctz(used)].?;
            if (ep.op_id == op_id) return ep;
        }
        return null;
    }

    pub fn finishedLocked(net: *const Net, op_id: u64) bool {
        for (net.finished[0..net.finished_count]) |id| if (id == op_id and id != 0) return true;
        return false;
    }

    pub fn findRecvLocked(ep: *Endpoint, src: u32, seq: u32) ?*Req {
        var used = ep.reqs_used;
        while (used != 0) : (used &= used - 1) {
            const req = &ep.reqs[@ctz(used)];
            if (req.kind == .recv and req.peer == src and req.seq == seq and !req.done.load(.monotonic)) return req;
        }
        return null;
    }

    pub fn allocReqLocked(ep: *Endpoint) ?u32 {
        if (ep.reqs_used == std.math.maxInt(u64)) return null;
        const index: u32 = @ctz(~ep.reqs_used);
        if (index >= requests_max) return null;
        ep.reqs_used |= @as(u64, 1) << @intCast(index);
        return index;
    }

    pub fn freeReqLocked(ep: *Endpoint, index: u32) void {
        std.debug.assert(ep.reqs[index].busy == 0);
        ep.reqs_used &= ~(@as(u64, 1) << @intCast(index));
    }

    pub fn checkDoneLocked(ep: *Endpoint, req: *Req) void {
        std.debug.assert(req.received <= req.buf.len);
        if (req.arrived and req.busy == 0 and req.received == req.buf.len) {
            req.done.store(true, .release);
            ep.cond.broadcast();
        }
    }

    /// Why the op must stop now, or null.
    pub fn stopReason(net: *Net, ep: *Endpoint, peer: u32, what: []const u8) ?Error {
        if (ep.failed.load(.acquire)) {
            net.mu.lock();
            defer net.mu.unlock();
            return ep.failure.?.err;
        }
        if (ep.canceled.load(.acquire)) return net.fail(ep, error.Canceled, -1, "canceled", .{});
        if (net.links.stopping.load(.acquire)) return net.fail(ep, error.Canceled, -1, "engine shutting down", .{});
        if (sys.monotonicNs() >= ep.deadline_ns)
            return net.fail(ep, error.Timeout, @intCast(peer), "timed out after {d} ms {s} rank {d}", .{ ep.timeout_ms, what, peer });
        return null;
    }

    // ---- the Comm table and sending: net_tx.zig ----

    pub const comm_vtable = tx_mod.comm_vtable;

    // ---- receiving and the stash: net_rx.zig ----

    pub const sink = rx_mod.sink;
    pub const claimStashLocked = rx_mod.claimStashLocked;
    pub const dropStashLocked = rx_mod.dropStashLocked;
    pub const route = rx_mod.route;
    pub const stashReserveLocked = rx_mod.stashReserveLocked;
    pub const evictOrphansLocked = rx_mod.evictOrphansLocked;
    pub const countRxLocked = rx_mod.countRxLocked;
};
