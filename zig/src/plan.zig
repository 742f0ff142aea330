//! The planner: which path and algorithm one op takes, as a pure function of what the op is
//! (collective, bytes, ranks, device), where its ranks are (same host, boards live) and the
//! configuration. And the configuration itself: every MOONRING_* knob the native core reads,
//! read once (Config.fromEnv) when an engine is created, never on the op path.
//!
//!   path         when
//!   cuda_direct  device buffers, a collective the CUDA IPC direct path runs
//!                (backend/cuda_direct.zig); its hello falls back to the links on every rank
//!                alike when a rank is on another host, has IPC off or refused
//!   board        host buffers, a group of 2..64 ranks on this host with live boards, an op the
//!                board runs (backend/board_direct.zig) within the size limits
//!   links        everything else: an algorithm of algo/ over the links (device buffers staged
//!                through host memory)
const std = @import("std");
const op = @import("op.zig");
const sys = @import("sys.zig");
const kinds = @import("transport/kinds.zig");
const board_mod = @import("transport/board.zig");
const common = @import("algo/common.zig");
const algorithms = @import("algo/algorithms.zig");

pub const Path = enum { cuda_direct, board, links };

/// What runs an op: `alone` (a group of one: send -> recv), one algorithm file of the links path
/// per value (generated from algo/algorithms.zig, in its order), or `backend` (board_direct,
/// cuda_direct decide).
pub const Algorithm = blk: {
    const files = @typeInfo(algorithms).@"struct".decls;
    var fields: [files.len + 2]std.builtin.Type.EnumField = undefined;
    fields[0] = .{ .name = "alone", .value = 0 };
    for (files, 1..) |file, i| fields[i] = .{ .name = file.name, .value = i };
    fields[files.len + 1] = .{ .name = "backend", .value = files.len + 1 };
    break :blk @Type(.{ .@"enum" = .{ .tag_type = u8, .fields = &fields, .decls = &.{}, .is_exhaustive = true } });
};

pub const Plan = struct { path: Path, algorithm: Algorithm };

/// The CUDA IPC direct path's knobs (backend/cuda_direct.zig).
pub const CudaConfig = struct {
    /// MOONRING_CUDA_IPC=0|off: never the direct path.
    ipc: bool = true,
    /// MOONRING_CUDA_TRACE=1: a log line per direct op with its phases.
    trace: bool = false,
    /// MOONRING_CUDA_SPIN_US: control waiters poll this long instead of sleeping.
    hot_spin_ns: u64 = 0,
    /// MOONRING_CUDA_COPY=kernel: pushes with SM kernels instead of the copy engines.
    copy_kernel: bool = false,
    /// MOONRING_CUDA_PIPELINE=1: allreduce blocks reduced and pushed in chunks.
    pipeline: bool = false,
    /// MOONRING_CUDA_PUSH=parallel: one stream per peer for pushes.
    push_parallel: bool = false,
};

pub const Config = struct {
    /// MOONRING_TRANSPORT: auto or one link kind.
    transport: kinds.Mode = .auto,
    /// MOONRING_BOARD=0: no board (every rank of a host must agree).
    board: bool = true,
    /// MOONRING_BOARD_CMA=0, or process_vm_readv refused here: large contributions are not
    /// read from peers' buffers, so large ops skip the board.
    board_cma: bool = true,
    /// MOONRING_BOARD_BYTES_MAX: ops larger than this (bytes per rank) skip the board.
    board_bytes_max: u64 = std.math.maxInt(u64),
    /// MOONRING_BOARD_ALLREDUCE_ALL: board allreduces up to this many bytes x (n - 1) have
    /// every rank reduce everything (backend/board_direct.zig); every rank must agree.
    board_allreduce_all_bytes: u64 = 64 << 10,
    /// MOONRING_BOARD_EAGER_RANKS: board groups of at least this many ranks run rooted ops
    /// one way and return before their readers are done (backend/board_direct.zig "eager");
    /// default: more ranks than the host's CPUs, where waiting for a descheduled peer costs
    /// most. Every rank must agree.
    board_eager_ranks_min: u32 = std.math.maxInt(u32),
    /// MOONRING_BOARD_LANES=0: two-rank groups' small ops use the entries, not the pair lanes
    /// (backend/board_direct.zig). Every rank must agree.
    board_lanes: bool = true,
    cuda: CudaConfig = .{},
    /// Algorithm thresholds of the links path (algo/common.zig).
    tuning: common.Tuning = .{},

    /// Every knob from the environment, once (engine creation). Bad values keep the default.
    pub fn fromEnv() Config {
        var config = Config{};
        if (sys.getenv("MOONRING_TRANSPORT")) |value| {
            if (std.meta.stringToEnum(kinds.Mode, value)) |mode| config.transport = mode else if (value.len > 0)
                sys.logLine("MOONRING_TRANSPORT={s} is not auto or a link kind ({s}); using auto", .{ value, modeNames() });
        }
        config.board = !envIs("MOONRING_BOARD", "0");
        config.board_cma = !envIs("MOONRING_BOARD_CMA", "0") and cmaUsable();
        if (sys.envU64("MOONRING_BOARD_BYTES_MAX")) |bytes| config.board_bytes_max = bytes;
        if (sys.envU64("MOONRING_BOARD_ALLREDUCE_ALL")) |bytes| config.board_allreduce_all_bytes = @max(bytes, 1);
        config.board_eager_ranks_min = sys.onlineCpus() + 1;
        config.board_lanes = !envIs("MOONRING_BOARD_LANES", "0");
        if (sys.envU64("MOONRING_BOARD_EAGER_RANKS")) |ranks| config.board_eager_ranks_min = @intCast(@min(@max(ranks, 2), std.math.maxInt(u32)));
        config.cuda = .{
            .ipc = !envIs("MOONRING_CUDA_IPC", "0") and !envIs("MOONRING_CUDA_IPC", "off"),
            .trace = envIs("MOONRING_CUDA_TRACE", "1"),
            .hot_spin_ns = (sys.envU64("MOONRING_CUDA_SPIN_US") orelse 0) *| std.time.ns_per_us,
            .copy_kernel = envIs("MOONRING_CUDA_COPY", "kernel"),
            .pipeline = envIs("MOONRING_CUDA_PIPELINE", "1"),
            .push_parallel = envIs("MOONRING_CUDA_PUSH", "parallel"),
        };
        return config;
    }
};

fn envIs(name: [*:0]const u8, value: []const u8) bool {
    const text = sys.getenv(name) orelse return false;
    return std.mem.eql(u8, text, value);
}

/// The values MOONRING_TRANSPORT takes ("auto|tcp|shm|...", from the link kind registry).
pub fn modeNames() []const u8 {
    comptime var names: []const u8 = "";
    inline for (@typeInfo(kinds.Mode).@"enum".fields, 0..) |field, i| names = names ++ (if (i > 0) "|" else "") ++ field.name;
    return names;
}

/// process_vm_readv works on this process (seccomp may forbid it); probed once per process.
fn cmaUsable() bool {
    cma_once.call();
    return cma_usable;
}

var cma_once = std.once(probeCma);
var cma_usable = false;
fn probeCma() void {
    const probe: u64 = 0x6d6f6f6e72696e67;
    var copy: u64 = 0;
    sys.processRead(sys.processId(), std.mem.asBytes(&copy), @intFromPtr(&probe)) catch |err| {
        sys.logLine("process_vm_readv is not usable here ({s}): large same-host collectives use the shm rings", .{@errorName(err)});
        return;
    };
    cma_usable = copy == probe;
}

/// The facts about one op the planner decides on.
pub const Query = struct {
    kind: op.Collective,
    /// Bytes of one rank's input (count x element bytes).
    bytes: u64,
    /// Ranks of the op's group.
    ranks: u32,
    /// Every rank of the group is on this host.
    same_host: bool,
    /// Every rank of the group has a live board this rank has mapped (same_host implied).
    boards_live: bool,
    /// Device (CUDA) buffers.
    device: bool,
};

pub fn plan(q: Query, config: *const Config) Plan {
    std.debug.assert(q.ranks >= 1 and q.ranks <= op.world_size_max);
    std.debug.assert(!q.boards_live or q.same_host);
    if (q.ranks == 1) return .{ .path = .links, .algorithm = .alone };
    // The direct protocol's hello decides the rest on every rank alike (other hosts, IPC off
    // on some rank, IPC refused): then every rank falls back to the links, staged.
    if (q.device and cudaDirectRuns(q)) return .{ .path = .cuda_direct, .algorithm = .backend };
    if (!q.device and q.boards_live and boardRuns(q, config)) return .{ .path = .board, .algorithm = .backend };
    return .{ .path = .links, .algorithm = algorithm(q.kind, q.bytes, config.tuning) };
}

/// The collectives the CUDA IPC direct path runs (the table's "cuda_direct"; backend/cuda_direct.zig).
pub fn cudaDirectRuns(q: Query) bool {
    if (q.ranks < 2 or q.ranks > cuda_group_size_max or !q.kind.cudaDirect()) return false;
    // alltoall's counts differ per rank: the backend's hello tells whether there is anything to move
    return q.kind.sendShape() == .counts or q.bytes > 0;
}

/// The CUDA IPC direct path's largest group (mr_reduceN_* sources).
pub const cuda_group_size_max = @import("cuda/driver.zig").reduce_sources_max;

/// Whether the board runs this op: a board collective (the table's "board"), its largest
/// contribution (one rank's send buffer) inline or read with process_vm_readv, and under
/// MOONRING_BOARD_BYTES_MAX.
pub fn boardRuns(q: Query, config: *const Config) bool {
    if (!config.board or !q.kind.board() or q.ranks < 2 or q.ranks > board_mod.counts_max) return false;
    if (q.bytes > config.board_bytes_max) return false;
    const largest: u64 = switch (q.kind.sendShape()) {
        .none => 0,
        .count => q.bytes,
        .count_n => q.bytes *| q.ranks,
        .counts => std.math.maxInt(u64), // ranks send different totals: assume large
    };
    return largest <= board_mod.inline_bytes_max or config.board_cma;
}

/// The algorithm over the links for a group of two or more (algo/dispatch.zig runs it).
pub fn algorithm(kind: op.Collective, bytes: u64, tuning: common.Tuning) Algorithm {
    const small = bytes < tuning.small_bytes;
    return switch (kind) {
        .allreduce => if (small) .allreduce_rd else .allreduce_ring,
        .reduce => if (small) .reduce_tree else .reduce_chain,
        .broadcast => if (small) .broadcast_tree else .broadcast_chain,
        else => tableAlgorithm(kind),
    };
}

/// The table's algorithm of `kind` ("algorithm" in src/ops/table.json); a name that is not
/// registered in algo/algorithms.zig fails the build.
fn tableAlgorithm(kind: op.Collective) Algorithm {
    return switch (kind) {
        inline else => |k| comptime blk: {
            @setEvalBranchQuota(10_000);
            break :blk std.meta.stringToEnum(Algorithm, k.algorithm()) orelse
                @compileError("src/ops/table.json: " ++ @tagName(k) ++ "'s algorithm " ++ k.algorithm() ++ " is not in zig/src/algo/algorithms.zig");
        },
    };
}

const testing = std.testing;

fn query(kind: op.Collective, bytes: u64, ranks: u32) Query {
    return .{ .kind = kind, .bytes = bytes, .ranks = ranks, .same_host = false, .boards_live = false, .device = false };
}

test "plan: links algorithms by size (small_bytes is the switch point)" {
    const config = Config{};
    const small = config.tuning.small_bytes;
    try testing.expectEqual(Plan{ .path = .links, .algorithm = .allreduce_rd }, plan(query(.allreduce, small - 1, 4), &config));
    try testing.expectEqual(Plan{ .path = .links, .algorithm = .allreduce_ring }, plan(query(.allreduce, small, 4), &config));
    try testing.expectEqual(Algorithm.reduce_tree, plan(query(.reduce, 8, 3), &config).algorithm);
    try testing.expectEqual(Algorithm.reduce_chain, plan(query(.reduce, 1 << 30, 3), &config).algorithm);
    try testing.expectEqual(Algorithm.broadcast_tree, plan(query(.broadcast, 0, 2), &config).algorithm);
    try testing.expectEqual(Algorithm.broadcast_chain, plan(query(.broadcast, small, 2), &config).algorithm);
    inline for (.{ .{ .allgather, .allgather_ring }, .{ .gather, .gather_linear }, .{ .scatter, .scatter_linear }, .{ .reduce_scatter, .reduce_scatter_ring }, .{ .alltoall, .alltoall_pairwise }, .{ .barrier, .barrier_dissemination }, .{ .send, .p2p }, .{ .recv, .p2p } }) |pair| {
        for ([_]u64{ 0, 8, small, 1 << 34 }) |bytes| try testing.expectEqual(@as(Algorithm, pair[1]), plan(query(pair[0], bytes, 5), &config).algorithm);
    }
    // A group of one never touches a link.
    try testing.expectEqual(Plan{ .path = .links, .algorithm = .alone }, plan(query(.allreduce, 1 << 20, 1), &config));
}

test "plan: the table's algorithm is the planner's choice for large ops" {
    const tuning = common.Tuning{};
    inline for (@typeInfo(op.Collective).@"enum".fields) |field| {
        const kind: op.Collective = @enumFromInt(field.value);
        try testing.expectEqual(tableAlgorithm(kind), algorithm(kind, 1 << 40, tuning));
    }
}

test "plan: the board takes same-host host collectives with live boards, within its limits" {
    var config = Config{ .board_cma = false };
    var q = query(.allreduce, 1024, 4);
    try testing.expectEqual(Path.links, plan(q, &config).path); // not on one host
    q.same_host = true;
    try testing.expectEqual(Path.links, plan(q, &config).path); // boards not mapped
    q.boards_live = true;
    try testing.expectEqual(Plan{ .path = .board, .algorithm = .backend }, plan(q, &config));
    // Without CMA only what fits an entry inline; with it anything.
    q.bytes = board_mod.inline_bytes_max + 1;
    try testing.expectEqual(Path.links, plan(q, &config).path);
    config.board_cma = true;
    try testing.expectEqual(Path.board, plan(q, &config).path);
    // scatter / reduce_scatter contribute n blocks.
    q.kind = .reduce_scatter;
    q.bytes = board_mod.inline_bytes_max / 4 + 1;
    config.board_cma = false;
    try testing.expectEqual(Path.links, plan(q, &config).path);
    q.kind = .barrier;
    try testing.expectEqual(Path.board, plan(q, &config).path);
    for ([_]op.Collective{ .send, .recv }) |kind| {
        q.kind = kind;
        try testing.expectEqual(Plan{ .path = .links, .algorithm = .p2p }, plan(q, &config));
    }
    q.kind = .allreduce;
    q.bytes = 4096;
    config.board_bytes_max = 4095; // MOONRING_BOARD_BYTES_MAX
    try testing.expectEqual(Path.links, plan(q, &config).path);
    config.board_bytes_max = 4096;
    try testing.expectEqual(Path.board, plan(q, &config).path);
    config.board = false; // MOONRING_BOARD=0
    try testing.expectEqual(Path.links, plan(q, &config).path);
    config.board = true;
    q.ranks = board_mod.counts_max + 1;
    try testing.expectEqual(Path.links, plan(q, &config).path);
    // Device buffers never take the board (they are staged and go over the links).
    q.ranks = 4;
    q.device = true;
    q.kind = .barrier;
    try testing.expectEqual(Path.links, plan(q, &config).path);
}

test "plan: device collectives the CUDA IPC direct path runs try it first (its hello decides)" {
    const config = Config{};
    var q = Query{ .kind = .allreduce, .bytes = 1 << 20, .ranks = 2, .same_host = true, .boards_live = true, .device = true };
    try testing.expectEqual(Plan{ .path = .cuda_direct, .algorithm = .backend }, plan(q, &config));
    for ([_]op.Collective{ .barrier, .send, .recv }) |kind| {
        q.kind = kind;
        try testing.expectEqual(Path.links, plan(q, &config).path);
    }
    q.kind = .alltoall;
    q.bytes = 0;
    try testing.expectEqual(Path.cuda_direct, plan(q, &config).path);
    q.kind = .gather;
    try testing.expectEqual(Plan{ .path = .links, .algorithm = .gather_linear }, plan(q, &config)); // nothing to move
    q.bytes = 4;
    q.ranks = cuda_group_size_max + 1;
    try testing.expectEqual(Path.links, plan(q, &config).path);
}
