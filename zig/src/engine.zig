//! Engine: one per rank (instance-based, so tests run many ranks as threads of one process).
//! mr_submit() validates an op, turns global ranks into a group (ascending ranks of
//! ranks_mask) and queues it; a worker thread (a pool that grows on demand up to ops_max, so
//! every submitted op runs at once and ops never wait on each other) runs it through the
//! algorithms over the rank's `Net`. Completions go into a bounded queue that JS drains with
//! mr_poll() (no native thread calls into JS) or waits on with mr_wait().
const std = @import("std");
const op = @import("op.zig");
const sys = @import("sys.zig");
const transport = @import("transport/transport.zig");
const netmod = @import("transport/net.zig");
const dispatch = @import("algo/dispatch.zig");
const cuda_driver = @import("cuda/driver.zig");
const staging = @import("cuda/staging.zig");
const cuda_direct = @import("backend/cuda_direct.zig");
const board_rules = @import("backend/board_rules.zig");
const plan = @import("plan.zig");
const board_mod = @import("transport/board.zig");
const admit = @import("engine_admit.zig");
const paths = @import("engine_paths.zig");

pub const Collective = op.Collective;
pub const DType = op.DType;
pub const RedOp = op.RedOp;
pub const Mode = netmod.Mode;

pub const Runner = *const fn (transport.Comm, op.OpDesc, std.mem.Allocator) transport.Error!void;

/// Tickets alive at once (submitted, not yet released). Also the worker and completion bound.
pub const ops_max = 128;
const worker_stack_bytes = 4 << 20;
/// Scratch a worker keeps between ops (P6); more is freed after the op that needed it.
const scratch_retain_bytes_max = 8 << 20;
pub const error_text_bytes_max = 400;

comptime {
    std.debug.assert(ops_max <= 256); // the slot index is a ticket's low byte
    std.debug.assert(ops_max <= netmod.endpoints_max);
    std.debug.assert(2 * ops_max == board_mod.entries_max); // a slot's board entries: boardEntry()
}

/// The MR_* status codes, from moonring.h (their one definition).
pub const Status = struct {
    const c = @import("abi_check.zig").c;
    pub const ok: i32 = c.MR_OK;
    pub const einval: i32 = c.MR_EINVAL;
    pub const enomem: i32 = c.MR_ENOMEM;
    pub const epeer: i32 = c.MR_EPEER;
    pub const etimeout: i32 = c.MR_ETIMEOUT;
    pub const ecanceled: i32 = c.MR_ECANCELED;
    pub const eproto: i32 = c.MR_EPROTO;
    pub const enodev: i32 = c.MR_ENODEV;
    pub const eio: i32 = c.MR_EIO;
    pub const ebusy: i32 = c.MR_EBUSY;

    pub fn fromError(err: transport.Error) i32 {
        return switch (err) {
            error.PeerFailed => epeer,
            error.Timeout => etimeout,
            error.Canceled => ecanceled,
            error.Protocol => eproto,
            error.OutOfMemory => enomem,
        };
    }
};

// ---- the calling thread's last error (mr_last_error) ----

threadlocal var last_error_buf: [512]u8 = undefined;
threadlocal var last_error_len: usize = 0;

pub fn setLastError(comptime fmt: []const u8, args: anytype) void {
    cuda_driver.clearError(); // mr_last_error() reports the newer of the two messages
    const text = std.fmt.bufPrint(&last_error_buf, fmt, args) catch last_error_buf[0..];
    last_error_len = text.len;
}

pub fn lastError() []const u8 {
    return last_error_buf[0..last_error_len];
}

/// $MOONRING_TRANSPORT (root.zig reads it once per engine it creates).
pub fn modeFromEnv() Mode {
    return plan.Config.fromEnv().transport;
}

pub const Options = struct {
    rank: u32,
    world_size_max: u32,
    cluster_id: []const u8,
    token: []const u8 = "",
    listen_host: []const u8 = "127.0.0.1",
    listen_port: u16 = 0,
    mode: Mode = .auto,
    host_id: u64 = 0, // 0 = this host's id
    runner: Runner = dispatch.run,
    /// Every other MOONRING_* knob; null: read from the environment (plan.Config.fromEnv) at
    /// create(). `mode` overrides its transport.
    config: ?plan.Config = null,
    stash_bytes_max: u64 = netmod.stash_bytes_default,
    shm_slot_bytes: u32 = 0, // 0 = default
    shm_slot_count: u32 = 0,
    tcp_chunk_bytes: u32 = 0,
};

/// One submission, as mr_submit() received it.
pub const Submit = struct {
    kind: u32,
    dtype: u32,
    redop: u32,
    op_id: u64,
    /// The group: a bitset of op.rank_words_max u64 words (bit r of word r/64 = global rank r).
    /// Null: `ranks_mask` (ranks 0..63 only; a convenience for callers in Zig).
    ranks: ?[*]const u64 = null,
    ranks_mask: u64 = 0,
    root: u32,
    send: ?[*]const u8,
    recv: ?[*]u8,
    count: u64,
    counts: ?[*]const u64,
    device: i32,
    timeout_ms: u32,
};

pub const SlotState = enum { free, queued, running, done };

pub const Slot = struct {
    /// The planner's facts about this op that need no lookup (same_host and boards_live are
    /// the engine's to fill).
    fn query(slot: *const Slot) plan.Query {
        return .{
            .kind = slot.kind,
            .bytes = slot.count * slot.dtype.bytes(),
            .ranks = slot.group_size,
            .same_host = false,
            .boards_live = false,
            .device = slot.device >= 0,
        };
    }

    fn bufferBytes(slot: *const Slot) struct { u64, u64 } {
        const n = slot.group_size;
        const counted = slot.kind == .alltoall;
        return op.bufferBytes(slot.kind, slot.dtype.bytes(), slot.count, n, slot.root_group == slot.group_rank, if (counted) slot.send_counts[0..n] else &.{}, if (counted) slot.recv_counts[0..n] else &.{});
    }

    state: SlotState = .free,
    ticket: u64 = 0,
    release_when_done: bool = false,
    cancel_requested: bool = false,
    kind: Collective = .barrier,
    dtype: DType = .u8,
    redop: RedOp = .sum,
    op_id: u64 = 0,
    group: [op.world_size_max]u32 = undefined,
    group_size: u32 = 0,
    group_rank: u32 = 0,
    root_group: u32 = 0,
    send: ?[*]const u8 = null,
    recv: ?[*]u8 = null,
    count: u64 = 0,
    send_counts: [op.world_size_max]u64 = undefined,
    recv_counts: [op.world_size_max]u64 = undefined,
    /// -1: host pointers; else the CUDA device the pointers live on (staged through host).
    device: i32 = -1,
    timeout_ms: u32 = 0,
    deadline_ns: u64 = 0,
    ep: netmod.Endpoint = .{},
    board_team: netmod.BoardTeam = .{},
    /// Which of the slot's two board entries its op uses (toggled at every admission).
    board_turn: u1 = 0,
    /// The endpoint was prepared at admission and registers only if the op has to wait
    /// (admitRunningLocked, engine_paths.boardCheck).
    ep_prepared: bool = false,
    /// Freed by the thread that ran it, without the lock (runNowStatus); the next admission
    /// reclaims it under the lock (claimSlotLocked), and no ticket finds it meanwhile.
    freed_unlocked: std.atomic.Value(bool) = .init(false),
    status: i32 = 0,
    failed_peer: i32 = -1,
    error_len: usize = 0,
    error_text: [error_text_bytes_max]u8 = undefined,
};

const cudaStatus = paths.cudaStatus;

const Completion = struct { ticket: u64, status: i32 };

pub const SlotMask = std.meta.Int(.unsigned, ops_max);

pub const Engine = struct {
    alloc: std.mem.Allocator,
    rank: u32,
    world_size_max: u32,
    net: *netmod.Net,
    runner: Runner,
    /// Read once at create(): the planner and the backends take their knobs from here.
    config: plan.Config,

    mu: std.Thread.Mutex = .{},
    stopping: bool = false,
    slots: [ops_max]Slot = [_]Slot{.{}} ** ops_max,
    /// Bit i: slots[i] is not free.
    slots_used: SlotMask = 0,
    serial: u64 = 1,
    queue: [ops_max]u16 = undefined,
    queue_head: u32 = 0,
    queue_len: u32 = 0,
    work_cond: std.Thread.Condition = .{},
    workers: [ops_max]std.Thread = undefined,
    workers_count: u32 = 0,
    /// Workers running an op (the others are idle or about to take the next queued op).
    workers_busy: u32 = 0,
    cq: [ops_max]Completion = undefined,
    cq_head: u32 = 0,
    cq_len: u32 = 0,
    cq_cond: std.Thread.Condition = .{},
    /// Peer device buffers mapped by the CUDA IPC direct path (backend/cuda_direct.zig).
    cuda_ipc: cuda_direct.Cache = .{},

    pub fn create(alloc: std.mem.Allocator, options: Options) !*Engine {
        if (options.world_size_max == 0 or options.world_size_max > op.world_size_max) {
            setLastError("world_size_max {d} is not in 1..{d}", .{ options.world_size_max, op.world_size_max });
            return error.InvalidArgument;
        }
        if (options.rank >= options.world_size_max) {
            setLastError("rank {d} is not below world_size_max {d}", .{ options.rank, options.world_size_max });
            return error.InvalidArgument;
        }
        const listen = sys.resolve(options.listen_host, options.listen_port) catch {
            setLastError("rank {d}: cannot resolve listen host '{s}'", .{ options.rank, options.listen_host });
            return error.InvalidArgument;
        };
        var config = options.config orelse plan.Config.fromEnv();
        config.transport = options.mode;
        var net_options = netmod.Options{
            .rank = options.rank,
            .world_size_max = options.world_size_max,
            .cluster_id = options.cluster_id,
            .token = options.token,
            .listen = listen,
            .mode = options.mode,
            .board = config.board,
            .host_id = if (options.host_id != 0) options.host_id else sys.hostId(),
            .stash_bytes_max = options.stash_bytes_max,
        };
        if (options.shm_slot_bytes != 0) net_options.shm_slot_bytes = options.shm_slot_bytes;
        if (options.shm_slot_count != 0) net_options.shm_slot_count = options.shm_slot_count;
        if (options.tcp_chunk_bytes != 0) net_options.tcp_chunk_bytes = options.tcp_chunk_bytes;
        const net = netmod.Net.init(alloc, net_options) catch |err| {
            setLastError("rank {d}: data-plane listener on {s}:{d} failed: {s}", .{ options.rank, options.listen_host, options.listen_port, @errorName(err) });
            return error.ListenFailed;
        };
        errdefer net.deinit();
        const engine = alloc.create(Engine) catch {
            setLastError("rank {d}: out of memory", .{options.rank});
            return error.OutOfMemory;
        };
        engine.* = .{
            .alloc = alloc,
            .rank = options.rank,
            .world_size_max = options.world_size_max,
            .net = net,
            .runner = options.runner,
            .config = config,
        };
        return engine;
    }

    /// In-flight ops complete with ECANCELED; threads stop; links close; shm segments go.
    pub fn destroy(engine: *Engine) void {
        engine.mu.lock();
        engine.stopping = true;
        for (&engine.slots) |*slot| {
            if (slot.state == .running and !slot.freed_unlocked.load(.acquire)) engine.net.cancel(&slot.ep);
        }
        engine.work_cond.broadcast();
        const workers = engine.workers_count;
        engine.mu.unlock();
        for (engine.workers[0..workers]) |thread| thread.join();
        engine.cuda_ipc.deinit();
        engine.net.deinit();
        engine.alloc.destroy(engine);
    }

    pub fn dataPort(engine: *const Engine) u16 {
        return engine.net.port;
    }

    pub fn setPeer(engine: *Engine, peer: u32, host: []const u8, port: u16, host_id: u64) error{InvalidArgument}!void {
        if (peer >= engine.world_size_max or peer == engine.rank) {
            setLastError("rank {d}: set_peer: rank {d} is not a peer (world_size_max {d})", .{ engine.rank, peer, engine.world_size_max });
            return error.InvalidArgument;
        }
        if (port == 0) {
            setLastError("rank {d}: set_peer: rank {d} has port 0", .{ engine.rank, peer });
            return error.InvalidArgument;
        }
        const addr = sys.resolve(host, port) catch {
            setLastError("rank {d}: set_peer: cannot resolve host '{s}' of rank {d}", .{ engine.rank, host, peer });
            return error.InvalidArgument;
        };
        engine.net.setPeer(peer, addr, host_id);
        engine.cuda_ipc.dropPeer(peer); // a new process there: old IPC mappings are stale
    }

    pub fn peerDown(engine: *Engine, peer: u32) error{InvalidArgument}!void {
        if (peer >= engine.world_size_max or peer == engine.rank) {
            setLastError("rank {d}: peer_down: rank {d} is not a peer", .{ engine.rank, peer });
            return error.InvalidArgument;
        }
        engine.net.peerDown(peer);
        engine.cuda_ipc.dropPeer(peer);
    }

    // ---- submission ----

    pub fn invalid(engine: *const Engine, comptime fmt: []const u8, args: anytype) error{InvalidArgument} {
        var buf: [400]u8 = undefined;
        const text = std.fmt.bufPrint(&buf, fmt, args) catch buf[0..];
        setLastError("rank {d}: invalid op: {s}", .{ engine.rank, text });
        return error.InvalidArgument;
    }

    pub const SubmitError = error{ InvalidArgument, Busy };

    /// Validates and queues an op; returns its ticket (> 0).
    pub fn submit(engine: *Engine, s: Submit) SubmitError!u64 {
        engine.mu.lock();
        defer engine.mu.unlock();
        const index = try engine.admitLocked(s, .queued);
        return engine.enqueueLocked(index);
    }

    /// submit(), except that a small board op whose peers have all published it already runs
    /// on the calling thread: it can finish without waiting on anyone, and the hand-offs to a
    /// worker and back (two thread wake-ups) are off the critical path of the last rank to
    /// arrive. Returns the ticket; opStatus() says whether it is complete (not in poll()).
    pub fn start(engine: *Engine, s: Submit) SubmitError!u64 {
        const slot = blk: {
            engine.mu.lock();
            defer engine.mu.unlock();
            break :blk try engine.admitRunningLocked(s);
        };
        if (engine.peersPublished(slot)) {
            // The caller's thread (an event loop) waits at most inline_wait_ms_max for a peer
            // that started and then stalled, not the op's whole timeout.
            if (slot.timeout_ms > inline_wait_ms_max) {
                slot.timeout_ms = inline_wait_ms_max;
                slot.deadline_ns = @min(slot.deadline_ns, sys.deadlineNs(inline_wait_ms_max));
                // A lane op's endpoint, prepared at admission, keeps the deadline it waits by.
                slot.ep.timeout_ms = slot.timeout_ms;
                slot.ep.deadline_ns = slot.deadline_ns;
            }
            engine.runSlot(slot, false, std.heap.c_allocator);
            engine.mu.lock();
            defer engine.mu.unlock();
            const ticket = slot.ticket;
            if (slot.release_when_done) engine.freeSlotLocked(slot) else slot.state = .done;
            return ticket;
        }
        engine.mu.lock();
        defer engine.mu.unlock();
        slot.state = .queued;
        slot.ep_prepared = false; // a worker opens it as usual
        return engine.enqueueLocked(engine.slotIndex(slot));
    }

    /// Admits an op the calling thread runs now. A lane op's endpoint is prepared here, under
    /// the lock a cancel takes, so no cancel is lost and runSlot() needs no lock of its own
    /// (E62: the lock pairs' locked instructions wait for the op's stores to the peer's lines).
    fn admitRunningLocked(engine: *Engine, s: Submit) SubmitError!*Slot {
        const slot = &engine.slots[try engine.admitLocked(s, .running)];
        slot.ep_prepared = engine.boardLanes(slot) and !engine.stopping;
        if (slot.ep_prepared) engine.net.prepare(&slot.ep, slot.op_id, slot.group[0..slot.group_size], slot.group_rank, slot.deadline_ns, slot.timeout_ms);
        return slot;
    }

    /// Ops up to this size (bytes per rank) may run on the submitting thread (start()).
    const inline_run_bytes_max = 64 << 10;
    /// How long such an op may wait on its (already started) peers before it times out.
    const inline_wait_ms_max: u32 = 1000;

    /// Every peer of a small host op on the board has published it already.
    fn peersPublished(engine: *Engine, slot: *Slot) bool {
        if (slot.device >= 0 or slot.group_size < 2 or slot.kind == .send or slot.kind == .recv or slot.kind == .alltoall) return false;
        if (slot.count * slot.dtype.bytes() > inline_run_bytes_max) return false;
        // The same test runSlot() applies (boardUsable), else the op would wait on the links.
        if (!plan.boardRuns(slot.query(), &engine.config)) return false;
        if (!engine.net.boardTeamOf(slot.group[0..slot.group_size], &slot.board_team)) return false;
        const me = slot.group_rank;
        // The entry's earlier publish lingers with readers still to come: settling it may wait.
        const own = slot.board_team.boards[me];
        const entry = engine.boardEntry(slot);
        if (own.inUse(entry) and own.departed(entry) < own.entry(entry).readers) return false;
        const bytes = slot.count * slot.dtype.bytes();
        const pair_reduce = slot.kind == .reduce and slot.group_size == 2 and bytes > engine.config.board_allreduce_all_bytes;
        const eager = engine.boardEager(slot);
        const lanes = engine.boardLanes(slot);
        var reads_any = false;
        for (0..slot.group_size) |p| {
            if (p == me or !board_rules.reads(slot.kind, me, slot.root_group, @intCast(p), pair_reduce, eager)) continue;
            reads_any = true;
            const peer_board = slot.board_team.boards[p];
            if (lanes) if (peer_board.laneHolds(slot.group[me], slot.op_id) != null) continue;
            if (peer_board.find(slot.op_id, slot.board_team.departed_serials[p], 0) == null) return false;
        }
        // Reading nobody, it only publishes: at once when its part is copied into the board
        // (board_rules.inline_always_bytes), else it would wait here for its readers.
        return reads_any or bytes * slot.group_size <= board_rules.inline_always_bytes;
    }

    fn enqueueLocked(engine: *Engine, index: usize) SubmitError!u64 {
        const slot = &engine.slots[index];
        std.debug.assert(slot.state == .queued);
        engine.queue[(engine.queue_head + engine.queue_len) % ops_max] = @intCast(index);
        engine.queue_len += 1;
        if (engine.queue_len > engine.workers_count - engine.workers_busy and engine.workers_count < ops_max) {
            if (std.Thread.spawn(.{ .stack_size = worker_stack_bytes }, workerMain, .{engine})) |thread| {
                engine.workers[engine.workers_count] = thread;
                engine.workers_count += 1;
            } else |_| if (engine.workers_count == 0) {
                engine.queue_len -= 1;
                engine.freeSlotLocked(slot);
                setLastError("rank {d}: could not start a worker thread", .{engine.rank});
                return error.Busy;
            }
        }
        engine.work_cond.signal();
        return slot.ticket;
    }

    /// Validates and runs an op on the calling thread (for embedders that await each op: no
    /// hand-off to a worker and back). Returns its ticket, complete: its status is
    /// opStatus(); it is not reported by poll(); release() it like any other.
    pub fn runNow(engine: *Engine, s: Submit) SubmitError!u64 {
        return (try engine.runNowStatus(s, false)).ticket;
    }

    /// runNow(); with `release_ok` a slot whose op succeeded is freed at once (one call and
    /// one lock instead of run, status and release: mr_run_packed). Returns the ticket (stale
    /// when freed) and the op's status.
    pub fn runNowStatus(engine: *Engine, s: Submit, release_ok: bool) SubmitError!struct { ticket: u64, status: i32 } {
        const slot = blk: {
            engine.mu.lock();
            defer engine.mu.unlock();
            break :blk try engine.admitRunningLocked(s);
        };
        engine.runSlot(slot, false, std.heap.c_allocator);
        const ticket = slot.ticket;
        const status = slot.status;
        if (release_ok and status == Status.ok) {
            // No lock: its locked instruction would wait for this op's stores to the peers'
            // lines to drain (E62); the next admission does that when they are long done.
            slot.freed_unlocked.store(true, .release);
            return .{ .ticket = ticket, .status = status };
        }
        engine.mu.lock();
        defer engine.mu.unlock();
        std.debug.assert(slot.state == .running);
        if (slot.release_when_done) engine.freeSlotLocked(slot) else slot.state = .done;
        return .{ .ticket = ticket, .status = status };
    }

    /// Status of a completed ticket; Status.ebusy while it runs, einval when unknown.
    pub fn opStatus(engine: *Engine, ticket: u64) i32 {
        engine.mu.lock();
        defer engine.mu.unlock();
        const slot = engine.slotOf(ticket) orelse return Status.einval;
        return if (slot.state == .done) slot.status else Status.ebusy;
    }

    // ---- admission: engine_admit.zig ----

    pub const admitLocked = admit.admitLocked;
    pub const groupOf = admit.groupOf;
    pub const alltoallCounts = admit.alltoallCounts;
    pub const checkBuffers = admit.checkBuffers;
    pub const claimSlotLocked = admit.claimSlotLocked;

    pub fn freeSlotLocked(engine: *Engine, slot: *Slot) void {
        const index = engine.slotIndex(slot);
        std.debug.assert(engine.slots_used & (@as(SlotMask, 1) << @intCast(index)) != 0);
        slot.state = .free;
        slot.freed_unlocked.store(false, .monotonic);
        engine.slots_used &= ~(@as(SlotMask, 1) << @intCast(index));
    }

    fn slotOf(engine: *Engine, ticket: u64) ?*Slot {
        const slot = &engine.slots[@as(usize, @intCast(ticket & 0xff)) % ops_max];
        if (slot.state == .free or slot.ticket != ticket or slot.freed_unlocked.load(.acquire)) return null;
        return slot;
    }

    // ---- workers ----

    fn workerMain(engine: *Engine) void {
        // P6: one scratch arena per worker, reused across ops (per-op arenas over c_allocator
        // mmap'd and faulted in ~2 MiB on every large allreduce).
        var arena_state = std.heap.ArenaAllocator.init(std.heap.c_allocator);
        defer arena_state.deinit();
        engine.mu.lock();
        defer engine.mu.unlock();
        while (true) {
            while (engine.queue_len == 0 and !engine.stopping) engine.work_cond.wait(&engine.mu);
            if (engine.queue_len == 0) return; // stopping and drained
            const index = engine.queue[engine.queue_head];
            engine.queue_head = (engine.queue_head + 1) % ops_max;
            engine.queue_len -= 1;
            const slot = &engine.slots[index];
            std.debug.assert(slot.state == .queued);
            slot.state = .running;
            engine.workers_busy += 1;
            const canceled = slot.cancel_requested or engine.stopping;
            engine.mu.unlock();
            engine.runSlot(slot, canceled, arena_state.allocator());
            _ = arena_state.reset(.{ .retain_with_limit = scratch_retain_bytes_max });
            engine.mu.lock();
            engine.completeLocked(slot);
            engine.workers_busy -= 1;
        }
    }

    fn completeLocked(engine: *Engine, slot: *Slot) void {
        std.debug.assert(slot.state == .running);
        if (slot.release_when_done) {
            engine.freeSlotLocked(slot);
            return;
        }
        slot.state = .done;
        std.debug.assert(engine.cq_len < ops_max); // one entry per live slot at most
        engine.cq[(engine.cq_head + engine.cq_len) % ops_max] = .{ .ticket = slot.ticket, .status = slot.status };
        engine.cq_len += 1;
        engine.cq_cond.broadcast();
    }

    pub fn setSlotError(engine: *Engine, slot: *Slot, status: i32, peer: i32, comptime fmt: []const u8, args: anytype) void {
        slot.status = status;
        slot.failed_peer = peer;
        // Same-host owners whose inline contribution to this op lingers stop waiting for us.
        if (engine.net.boards.own) |own| own.recordGaveUp(slot.op_id);
        const prefix = std.fmt.bufPrint(&slot.error_text, "rank {d}: {s} op {d}: ", .{ engine.rank, @tagName(slot.kind), slot.op_id }) catch unreachable;
        const rest = std.fmt.bufPrint(slot.error_text[prefix.len..], fmt, args) catch slot.error_text[prefix.len..];
        slot.error_len = prefix.len + rest.len;
    }

    const dummy_buffer: [64]u8 align(64) = [_]u8{0} ** 64;

    fn runSlot(engine: *Engine, slot: *Slot, canceled: bool, scratch: std.mem.Allocator) void {
        slot.status = Status.ok;
        slot.failed_peer = -1;
        slot.error_len = 0;
        if (canceled) return engine.setSlotError(slot, Status.ecanceled, -1, "canceled before it started", .{});
        if (sys.pastDeadline(slot.deadline_ns))
            return engine.setSlotError(slot, Status.etimeout, -1, "timed out after {d} ms before it started", .{slot.timeout_ms});

        // Buffers the op shapes let a rank omit (non-root reduce/gather recv, ...) are never
        // touched by the algorithms; they still get a valid pointer.
        const recv: ?[*]u8 = slot.recv;
        var send: ?[*]const u8 = slot.send;
        if (send == null and (slot.kind == .broadcast or slot.kind == .scatter)) send = recv;

        if (!slot.ep_prepared) {
            engine.net.open(&slot.ep, slot.op_id, slot.group[0..slot.group_size], slot.group_rank, slot.deadline_ns, slot.timeout_ms) catch |err| {
                return engine.setSlotError(slot, Status.einval, -1, "cannot register op: {s}", .{@errorName(err)});
            };
            // A cancel that raced with the start.
            engine.mu.lock();
            const cancel_now = slot.cancel_requested or engine.stopping;
            engine.mu.unlock();
            if (cancel_now) engine.net.cancel(&slot.ep);
        }

        const chosen, const facts = engine.planSlot(slot);
        std.debug.assert(chosen.path != .board or !facts.device);
        if (!slot.ep.registered and chosen.path != .board) {
            // Prepared for the board, planned for the links (the peer's board is gone).
            engine.net.register(&slot.ep) catch |err| {
                return engine.setSlotError(slot, Status.einval, -1, "cannot register op: {s}", .{@errorName(err)});
            };
        }
        if (chosen.path == .cuda_direct and engine.runCudaDirect(slot, send, recv, facts.same_host)) return;
        if (facts.device and engine.runVerbsDirect(slot, send, recv, facts.same_host)) return;
        engine.runHost(slot, send, recv, chosen, scratch);
    }

    /// The planner's choice for `slot` (backend/plan.zig), with the facts it was given: host
    /// placement and live boards are looked up only where they can change the answer.
    fn planSlot(engine: *Engine, slot: *Slot) struct { plan.Plan, plan.Query } {
        var facts = slot.query();
        if (facts.device) {
            facts.same_host = engine.net.sameHost(slot.group[0..slot.group_size]);
        } else if (engine.runner == dispatch.run and plan.boardRuns(facts, &engine.config)) {
            // Custom runners (tests) always get the links.
            facts.boards_live = engine.net.boardTeam(&slot.ep, &slot.board_team);
            facts.same_host = facts.boards_live;
        }
        return .{ plan.plan(facts, &engine.config), facts };
    }

    // ---- the direct device paths and the board: engine_paths.zig ----

    pub const runCudaDirect = paths.runCudaDirect;
    pub const runVerbsDirect = paths.runVerbsDirect;
    pub const runOnBoard = paths.runOnBoard;

    /// Host buffers (device ones staged through pinned host mirrors: copy in, host
    /// algorithm, copy out) on the board or over the links, as planned.
    fn runHost(engine: *Engine, slot: *Slot, send_in: ?[*]const u8, recv_in: ?[*]u8, chosen: plan.Plan, scratch: std.mem.Allocator) void {
        var send = send_in;
        var recv = recv_in;
        var mirror: ?staging.HostMirror = null;
        defer if (mirror) |*m| m.release();
        if (slot.device >= 0) {
            const send_bytes, const recv_bytes = slot.bufferBytes();
            const send_dptr: u64 = if (send) |p| @intFromPtr(p) else 0;
            const recv_dptr: u64 = if (recv) |p| @intFromPtr(p) else 0;
            std.debug.assert(slot.ep.registered); // device ops never take the lanes
            mirror = staging.HostMirror.begin(slot.device, send_dptr, send_bytes, recv_dptr, recv_bytes) catch |err| {
                engine.net.close(&slot.ep);
                return engine.setSlotError(slot, cudaStatus(err), -1, "device {d}: {s}", .{ slot.device, cuda_driver.lastErrorMessage() });
            };
            send = if (mirror.?.send.len > 0) mirror.?.send.ptr else null;
            recv = if (mirror.?.recv.len > 0) mirror.?.recv.ptr else null;
            if (send_dptr != 0 and send_dptr == recv_dptr) send = recv; // in place stays in place
        }
        const desc = op.OpDesc{
            .kind = slot.kind,
            .dtype = slot.dtype,
            .redop = slot.redop,
            .root = slot.root_group,
            .count = slot.count,
            .send_counts = if (slot.kind == .alltoall) slot.send_counts[0..slot.group_size] else &.{},
            .recv_counts = if (slot.kind == .alltoall) slot.recv_counts[0..slot.group_size] else &.{},
            .send = send orelse &dummy_buffer,
            .recv = recv orelse @constCast(&dummy_buffer),
        };
        const result = if (chosen.path == .board)
            engine.runOnBoard(slot, desc, scratch)
        else
            engine.runner(slot.ep.comm(), desc, scratch);
        if (slot.ep.registered) engine.net.close(&slot.ep);
        if (result) |_| {
            if (mirror) |*m| m.finish() catch |err| {
                return engine.setSlotError(slot, cudaStatus(err), -1, "device {d}: copying the result back: {s}", .{ slot.device, cuda_driver.lastErrorMessage() });
            };
        } else |err| {
            if (slot.ep.failure) |failure| {
                engine.setSlotError(slot, Status.fromError(failure.err), failure.peer, "{s}", .{failure.message()});
            } else {
                engine.setSlotError(slot, Status.fromError(err), -1, "algorithm failed: {s}", .{@errorName(err)});
            }
        }
    }

    /// The board entry `slot`'s op publishes in: in eager groups (board_direct.zig, where a
    /// publish may linger) the slot's two entries in turn, else its first.
    pub fn boardEntry(engine: *const Engine, slot: *const Slot) u32 {
        const turn: u32 = if (engine.boardEager(slot)) slot.board_turn else 0;
        return @intCast(2 * engine.slotIndex(slot) + turn);
    }

    /// The group runs board ops eagerly (plan.Config.board_eager_ranks_min), or this op goes
    /// through the pair lanes, which are eager too.
    pub fn boardEager(engine: *const Engine, slot: *const Slot) bool {
        return slot.group_size >= engine.config.board_eager_ranks_min or engine.boardLanes(slot);
    }

    /// The op goes through the pair lanes (board_rules.usesLanes): host buffers only (the
    /// CUDA direct path's control records use the entries).
    pub fn boardLanes(engine: *const Engine, slot: *const Slot) bool {
        if (slot.device >= 0) return false;
        const pair_count = if (slot.kind == .alltoall and slot.group_size == 2) blk: {
            const peer = 1 - slot.group_rank;
            break :blk @max(slot.send_counts[peer], slot.recv_counts[peer]);
        } else 0;
        return board_rules.usesLanes(slot.kind, slot.group[0..slot.group_size], slot.count, slot.dtype.bytes(), pair_count, engine.config.board_lanes);
    }

    pub fn slotIndex(engine: *const Engine, slot: *const Slot) usize {
        const index = (@intFromPtr(slot) - @intFromPtr(&engine.slots[0])) / @sizeOf(Slot);
        std.debug.assert(index < ops_max and &engine.slots[index] == slot);
        return index;
    }

    // ---- completion ----

    pub fn poll(engine: *Engine, tickets: []u64, statuses: []i32) u32 {
        std.debug.assert(tickets.len == statuses.len);
        engine.mu.lock();
        defer engine.mu.unlock();
        var written: u32 = 0;
        while (written < tickets.len and engine.cq_len > 0) : (written += 1) {
            const c = engine.cq[engine.cq_head];
            engine.cq_head = (engine.cq_head + 1) % ops_max;
            engine.cq_len -= 1;
            tickets[written] = c.ticket;
            statuses[written] = c.status;
        }
        return written;
    }

    /// True when a completion is queued (waiting up to timeout_ms for one).
    pub fn wait(engine: *Engine, timeout_ms: u32) bool {
        const deadline = sys.monotonicNs() + @as(u64, timeout_ms) * std.time.ns_per_ms;
        engine.mu.lock();
        defer engine.mu.unlock();
        while (engine.cq_len == 0 and !engine.stopping) {
            const now = sys.monotonicNs();
            if (now >= deadline) break;
            engine.cq_cond.timedWait(&engine.mu, deadline - now) catch {};
        }
        return engine.cq_len > 0;
    }

    /// Copies the error text of a completed ticket; returns its full length (0 if none).
    pub fn opError(engine: *Engine, ticket: u64, buf: []u8) usize {
        engine.mu.lock();
        defer engine.mu.unlock();
        const slot = engine.slotOf(ticket) orelse return 0;
        if (slot.state != .done) return 0;
        const n = @min(buf.len, slot.error_len);
        @memcpy(buf[0..n], slot.error_text[0..n]);
        return slot.error_len;
    }

    pub fn opFailedPeer(engine: *Engine, ticket: u64) i32 {
        engine.mu.lock();
        defer engine.mu.unlock();
        const slot = engine.slotOf(ticket) orelse return -1;
        if (slot.state != .done) return -1;
        return slot.failed_peer;
    }

    pub fn cancel(engine: *Engine, ticket: u64) error{InvalidArgument}!void {
        engine.mu.lock();
        defer engine.mu.unlock();
        const slot = engine.slotOf(ticket) orelse {
            setLastError("rank {d}: cancel: unknown ticket {d}", .{ engine.rank, ticket });
            return error.InvalidArgument;
        };
        switch (slot.state) {
            .queued => slot.cancel_requested = true,
            .running => {
                slot.cancel_requested = true;
                engine.net.cancel(&slot.ep);
            },
            .done, .free => {},
        }
    }

    pub fn release(engine: *Engine, ticket: u64) void {
        engine.mu.lock();
        defer engine.mu.unlock();
        const slot = engine.slotOf(ticket) orelse return;
        switch (slot.state) {
            .done => {
                // Released before polled: its completion goes too, so the queue never holds
                // more entries than there are slots.
                engine.removeCompletionLocked(ticket);
                engine.freeSlotLocked(slot);
            },
            .queued, .running => slot.release_when_done = true,
            .free => {},
        }
    }

    fn removeCompletionLocked(engine: *Engine, ticket: u64) void {
        var i: u32 = 0;
        while (i < engine.cq_len) : (i += 1) {
            if (engine.cq[(engine.cq_head + i) % ops_max].ticket != ticket) continue;
            var j = i;
            while (j + 1 < engine.cq_len) : (j += 1) {
                engine.cq[(engine.cq_head + j) % ops_max] = engine.cq[(engine.cq_head + j + 1) % ops_max];
            }
            engine.cq_len -= 1;
            return;
        }
    }

    /// Blocks until `ticket` completes (tests); returns its status and keeps it unreleased.
    pub fn waitTicket(engine: *Engine, ticket: u64) i32 {
        engine.mu.lock();
        defer engine.mu.unlock();
        while (true) {
            const slot = engine.slotOf(ticket) orelse return Status.einval;
            if (slot.state == .done) {
                engine.removeCompletionLocked(ticket); // poll() won't report it again
                return slot.status;
            }
            engine.cq_cond.timedWait(&engine.mu, 100 * std.time.ns_per_ms) catch {};
        }
    }
};
