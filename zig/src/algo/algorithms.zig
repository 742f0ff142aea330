//! The registry of the links path's algorithms: one line per algorithm file of this directory.
//! plan.Algorithm is generated from these names, algo/dispatch.zig runs the one the planner
//! names, and each collective's default comes from the op table ("algorithm" in
//! src/ops/table.json; plan.zig checks at compile time that every name is registered here).
//! Each file exports `run(comm, desc, scratch, tuning) transport.Error!void`.
pub const allreduce_rd = @import("allreduce_rd.zig");
pub const allreduce_ring = @import("allreduce_ring.zig");
pub const reduce_tree = @import("reduce_tree.zig");
pub const reduce_chain = @import("reduce_chain.zig");
pub const broadcast_tree = @import("broadcast_tree.zig");
pub const broadcast_chain = @import("broadcast_chain.zig");
pub const allgather_ring = @import("allgather_ring.zig");
pub const gather_linear = @import("gather_linear.zig");
pub const scatter_linear = @import("scatter_linear.zig");
pub const reduce_scatter_ring = @import("reduce_scatter_ring.zig");
pub const alltoall_pairwise = @import("alltoall_pairwise.zig");
pub const barrier_dissemination = @import("barrier_dissemination.zig");
pub const p2p = @import("p2p.zig");
