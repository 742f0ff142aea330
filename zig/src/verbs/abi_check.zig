//! Compares abi.zig with rdma-core's <infiniband/verbs.h> field by field (sizes and offsets).
//! Built into the conformance tests only where the header is installed (build.zig checks;
//! scripts/setup-verbs.sh installs Debian's libibverbs-dev).
const std = @import("std");
const abi = @import("abi.zig");
const c = @cImport(@cInclude("infiniband/verbs.h"));

fn expectSame(comptime Ours: type, comptime Theirs: type) !void {
    try std.testing.expectEqual(@sizeOf(Theirs), @sizeOf(Ours));
    inline for (std.meta.fields(Ours)) |field| {
        // Anonymous unions of the header (imm_data / invalidated_rkey, bind_mw / tso) are
        // named differently by translate-c; their offsets are covered by the sizes and the
        // neighbouring fields.
        if (@hasField(Theirs, field.name)) {
            std.testing.expectEqual(@offsetOf(Theirs, field.name), @offsetOf(Ours, field.name)) catch |err| {
                std.debug.print("{s}.{s}: header offset {d}, ours {d}\n", .{ @typeName(Ours), field.name, @offsetOf(Theirs, field.name), @offsetOf(Ours, field.name) });
                return err;
            };
        }
    }
}

test "abi.zig matches <infiniband/verbs.h>" {
    try expectSame(abi.Device, c.struct_ibv_device);
    try expectSame(abi.ContextOps, c.struct_ibv_context_ops);
    try expectSame(abi.Context, c.struct_ibv_context);
    try expectSame(abi.Pd, c.struct_ibv_pd);
    try expectSame(abi.Mr, c.struct_ibv_mr);
    try expectSame(abi.Cq, c.struct_ibv_cq);
    try expectSame(abi.CompChannel, c.struct_ibv_comp_channel);
    try expectSame(abi.Qp, c.struct_ibv_qp);
    try expectSame(abi.Wc, c.struct_ibv_wc);
    try expectSame(abi.Sge, c.struct_ibv_sge);
    try expectSame(abi.SendWr, c.struct_ibv_send_wr);
    try expectSame(abi.RecvWr, c.struct_ibv_recv_wr);
    try expectSame(abi.QpCap, c.struct_ibv_qp_cap);
    try expectSame(abi.QpInitAttr, c.struct_ibv_qp_init_attr);
    try expectSame(abi.QpAttr, c.struct_ibv_qp_attr);
    try expectSame(abi.AhAttr, c.struct_ibv_ah_attr);
    try expectSame(abi.GlobalRoute, c.struct_ibv_global_route);
    try expectSame(abi.PortAttr, c.struct_ibv_port_attr);
    try expectSame(abi.DeviceAttr, c.struct_ibv_device_attr);
    try std.testing.expectEqual(@as(u32, c.IBV_WC_RNR_RETRY_EXC_ERR), @intFromEnum(abi.WcStatus.rnr_retry_exc_err));
    try std.testing.expectEqual(@as(u32, c.IBV_WC_GENERAL_ERR), @intFromEnum(abi.WcStatus.general_err));
    try std.testing.expectEqual(@as(u32, c.IBV_WC_RECV_RDMA_WITH_IMM), abi.wc_recv_rdma_with_imm);
    try std.testing.expectEqual(@as(c_int, c.IBV_QP_DEST_QPN), abi.qp_dest_qpn);
    try std.testing.expectEqual(@as(c_int, c.IBV_QP_MAX_DEST_RD_ATOMIC), abi.qp_max_dest_rd_atomic);
    try std.testing.expectEqual(@as(u32, c.IBV_SEND_INLINE), abi.send_inline);
    try std.testing.expectEqual(@as(u32, c.IBV_WR_RDMA_READ), abi.wr_rdma_read);
}
