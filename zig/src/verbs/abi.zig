//! The libibverbs ABI that moonring uses, written out so that neither the core nor the test
//! provider needs <infiniband/verbs.h> to build. Layouts follow rdma-core's verbs.h (the ABI
//! every provider shares: ibv_post_send / ibv_post_recv / ibv_poll_cq are inline functions in
//! that header that call through `context.ops`). abi_check.zig compares every struct here
//! with the real header field by field when the header is installed (`zig build test`).
const std = @import("std");

pub const Mutex = std.c.pthread_mutex_t;
pub const Cond = std.c.pthread_cond_t;

pub const sysfs_name_max = 64;
pub const sysfs_path_max = 256;

// enum ibv_node_type / ibv_transport_type
pub const node_ca: c_int = 1;
pub const transport_ib: c_int = 0;

// enum ibv_mtu
pub const mtu_1024: u32 = 3;
pub const mtu_4096: u32 = 5;
pub fn mtuBytes(mtu: u32) u32 {
    return @as(u32, 128) << @intCast(@min(mtu, 5));
}

// enum ibv_port_state, link layer
pub const port_active: u32 = 4;
pub const link_layer_infiniband: u8 = 1;
pub const link_layer_ethernet: u8 = 2;

// enum ibv_qp_type
pub const qpt_rc: u32 = 2;

// enum ibv_qp_state
pub const QpState = enum(u32) { reset = 0, init = 1, rtr = 2, rts = 3, sqd = 4, sqe = 5, err = 6, unknown = 7, _ };

// enum ibv_qp_attr_mask
pub const qp_state: c_int = 1 << 0;
pub const qp_cur_state: c_int = 1 << 1;
pub const qp_access_flags: c_int = 1 << 3;
pub const qp_pkey_index: c_int = 1 << 4;
pub const qp_port: c_int = 1 << 5;
pub const qp_qkey: c_int = 1 << 6;
pub const qp_av: c_int = 1 << 7;
pub const qp_timeout: c_int = 1 << 9;
pub const qp_retry_cnt: c_int = 1 << 10;
pub const qp_rnr_retry: c_int = 1 << 11;
pub const qp_rq_psn: c_int = 1 << 12;
pub const qp_max_qp_rd_atomic: c_int = 1 << 13;
pub const qp_min_rnr_timer: c_int = 1 << 15;
pub const qp_sq_psn: c_int = 1 << 16;
pub const qp_max_dest_rd_atomic: c_int = 1 << 17;
pub const qp_path_mtu: c_int = 1 << 18;
pub const qp_cap: c_int = 1 << 19;
pub const qp_dest_qpn: c_int = 1 << 20;

// enum ibv_access_flags
pub const access_local_write: c_int = 1;
pub const access_remote_write: c_int = 1 << 1;
pub const access_remote_read: c_int = 1 << 2;
pub const access_remote_atomic: c_int = 1 << 3;

// enum ibv_wr_opcode
pub const wr_rdma_write: u32 = 0;
pub const wr_rdma_write_with_imm: u32 = 1;
pub const wr_send: u32 = 2;
pub const wr_send_with_imm: u32 = 3;
pub const wr_rdma_read: u32 = 4;

// enum ibv_send_flags
pub const send_fence: u32 = 1 << 0;
pub const send_signaled: u32 = 1 << 1;
pub const send_solicited: u32 = 1 << 2;
pub const send_inline: u32 = 1 << 3;

// enum ibv_wc_opcode
pub const wc_send: u32 = 0;
pub const wc_rdma_write: u32 = 1;
pub const wc_rdma_read: u32 = 2;
pub const wc_recv: u32 = 1 << 7;
pub const wc_recv_rdma_with_imm: u32 = (1 << 7) + 1;

// enum ibv_wc_flags
pub const wc_with_imm: c_uint = 1 << 1;

/// enum ibv_wc_status (values in header order).
pub const WcStatus = enum(u32) {
    success = 0,
    loc_len_err = 1,
    loc_qp_op_err = 2,
    loc_eec_op_err = 3,
    loc_prot_err = 4,
    wr_flush_err = 5,
    mw_bind_err = 6,
    bad_resp_err = 7,
    loc_access_err = 8,
    rem_inv_req_err = 9,
    rem_access_err = 10,
    rem_op_err = 11,
    retry_exc_err = 12,
    rnr_retry_exc_err = 13,
    fatal_err = 19,
    general_err = 21,
    _,
};

pub const Gid = extern union {
    raw: [16]u8,
    global: extern struct { subnet_prefix: u64, interface_id: u64 },
};

pub const DeviceOps = extern struct {
    _dummy1: ?*const anyopaque = null,
    _dummy2: ?*const anyopaque = null,
};

pub const Device = extern struct {
    _ops: DeviceOps = .{},
    node_type: c_int = node_ca,
    transport_type: c_int = transport_ib,
    name: [sysfs_name_max]u8 = [_]u8{0} ** sysfs_name_max,
    dev_name: [sysfs_name_max]u8 = [_]u8{0} ** sysfs_name_max,
    dev_path: [sysfs_path_max]u8 = [_]u8{0} ** sysfs_path_max,
    ibdev_path: [sysfs_path_max]u8 = [_]u8{0} ** sysfs_path_max,
};

const Unused = ?*const anyopaque;

pub const PollCqFn = *const fn (cq: *Cq, num_entries: c_int, wc: [*]Wc) callconv(.c) c_int;
pub const PostSendFn = *const fn (qp: *Qp, wr: ?*SendWr, bad_wr: *?*SendWr) callconv(.c) c_int;
pub const PostRecvFn = *const fn (qp: *Qp, wr: ?*RecvWr, bad_wr: *?*RecvWr) callconv(.c) c_int;
pub const ReqNotifyCqFn = *const fn (cq: *Cq, solicited_only: c_int) callconv(.c) c_int;

/// struct ibv_context_ops: the table verbs.h's inline functions call through.
pub const ContextOps = extern struct {
    _compat_query_device: Unused = null,
    _compat_query_port: Unused = null,
    _compat_alloc_pd: Unused = null,
    _compat_dealloc_pd: Unused = null,
    _compat_reg_mr: Unused = null,
    _compat_rereg_mr: Unused = null,
    _compat_dereg_mr: Unused = null,
    alloc_mw: Unused = null,
    bind_mw: Unused = null,
    dealloc_mw: Unused = null,
    _compat_create_cq: Unused = null,
    poll_cq: ?PollCqFn = null,
    req_notify_cq: ?ReqNotifyCqFn = null,
    _compat_cq_event: Unused = null,
    _compat_resize_cq: Unused = null,
    _compat_destroy_cq: Unused = null,
    _compat_create_srq: Unused = null,
    _compat_modify_srq: Unused = null,
    _compat_query_srq: Unused = null,
    _compat_destroy_srq: Unused = null,
    post_srq_recv: Unused = null,
    _compat_create_qp: Unused = null,
    _compat_query_qp: Unused = null,
    _compat_modify_qp: Unused = null,
    _compat_destroy_qp: Unused = null,
    post_send: ?PostSendFn = null,
    post_recv: ?PostRecvFn = null,
    _compat_create_ah: Unused = null,
    _compat_destroy_ah: Unused = null,
    _compat_attach_mcast: Unused = null,
    _compat_detach_mcast: Unused = null,
    _compat_async_event: Unused = null,
};

pub const Context = extern struct {
    device: *Device,
    ops: ContextOps,
    cmd_fd: c_int,
    async_fd: c_int,
    num_comp_vectors: c_int,
    mutex: Mutex,
    abi_compat: ?*anyopaque,
};

pub const Pd = extern struct {
    context: *Context,
    handle: u32,
};

pub const Mr = extern struct {
    context: *Context,
    pd: *Pd,
    addr: ?*anyopaque,
    length: usize,
    handle: u32,
    lkey: u32,
    rkey: u32,
};

/// struct ibv_comp_channel: `fd` becomes readable when an armed CQ (ibv_req_notify_cq) of
/// this channel gets a completion; ibv_get_cq_event takes the event, ibv_ack_cq_events acks it.
pub const CompChannel = extern struct {
    context: *Context,
    fd: c_int,
    refcnt: c_int,
};

pub const Cq = extern struct {
    context: *Context,
    channel: ?*CompChannel,
    cq_context: ?*anyopaque,
    handle: u32,
    cqe: c_int,
    mutex: Mutex,
    cond: Cond,
    comp_events_completed: u32,
    async_events_completed: u32,
};

pub const Qp = extern struct {
    context: *Context,
    qp_context: ?*anyopaque,
    pd: *Pd,
    send_cq: *Cq,
    recv_cq: *Cq,
    srq: ?*anyopaque,
    handle: u32,
    qp_num: u32,
    state: QpState,
    qp_type: u32,
    mutex: Mutex,
    cond: Cond,
    events_completed: u32,
};

pub const Wc = extern struct {
    wr_id: u64 = 0,
    status: WcStatus = .success,
    opcode: u32 = 0,
    vendor_err: u32 = 0,
    byte_len: u32 = 0,
    /// Network byte order, as the header says.
    imm_data: u32 = 0,
    qp_num: u32 = 0,
    src_qp: u32 = 0,
    wc_flags: c_uint = 0,
    pkey_index: u16 = 0,
    slid: u16 = 0,
    sl: u8 = 0,
    dlid_path_bits: u8 = 0,
};

pub const Sge = extern struct {
    addr: u64,
    length: u32,
    lkey: u32,
};

pub const SendWr = extern struct {
    wr_id: u64 = 0,
    next: ?*SendWr = null,
    sg_list: ?[*]Sge = null,
    num_sge: c_int = 0,
    opcode: u32 = wr_send,
    send_flags: c_uint = 0,
    /// Network byte order.
    imm_data: u32 = 0,
    wr: extern union {
        rdma: extern struct { remote_addr: u64, rkey: u32 },
        atomic: extern struct { remote_addr: u64, compare_add: u64, swap: u64, rkey: u32 },
        ud: extern struct { ah: ?*anyopaque, remote_qpn: u32, remote_qkey: u32 },
    } = .{ .atomic = .{ .remote_addr = 0, .compare_add = 0, .swap = 0, .rkey = 0 } },
    qp_type: extern union { xrc: extern struct { remote_srqn: u32 } } = .{ .xrc = .{ .remote_srqn = 0 } },
    bind_mw: extern struct {
        mw: ?*anyopaque = null,
        rkey: u32 = 0,
        mr: ?*anyopaque = null,
        addr: u64 = 0,
        length: u64 = 0,
        mw_access_flags: c_uint = 0,
    } = .{},
};

pub const RecvWr = extern struct {
    wr_id: u64 = 0,
    next: ?*RecvWr = null,
    sg_list: ?[*]Sge = null,
    num_sge: c_int = 0,
};

pub const QpCap = extern struct {
    max_send_wr: u32 = 0,
    max_recv_wr: u32 = 0,
    max_send_sge: u32 = 0,
    max_recv_sge: u32 = 0,
    max_inline_data: u32 = 0,
};

pub const QpInitAttr = extern struct {
    qp_context: ?*anyopaque = null,
    send_cq: ?*Cq = null,
    recv_cq: ?*Cq = null,
    srq: ?*anyopaque = null,
    cap: QpCap = .{},
    qp_type: u32 = qpt_rc,
    sq_sig_all: c_int = 0,
};

pub const GlobalRoute = extern struct {
    dgid: Gid = .{ .raw = [_]u8{0} ** 16 },
    flow_label: u32 = 0,
    sgid_index: u8 = 0,
    hop_limit: u8 = 0,
    traffic_class: u8 = 0,
};

pub const AhAttr = extern struct {
    grh: GlobalRoute = .{},
    dlid: u16 = 0,
    sl: u8 = 0,
    src_path_bits: u8 = 0,
    static_rate: u8 = 0,
    is_global: u8 = 0,
    port_num: u8 = 0,
};

pub const QpAttr = extern struct {
    qp_state: QpState = .reset,
    cur_qp_state: QpState = .reset,
    path_mtu: u32 = 0,
    path_mig_state: u32 = 0,
    qkey: u32 = 0,
    rq_psn: u32 = 0,
    sq_psn: u32 = 0,
    dest_qp_num: u32 = 0,
    qp_access_flags: c_uint = 0,
    cap: QpCap = .{},
    ah_attr: AhAttr = .{},
    alt_ah_attr: AhAttr = .{},
    pkey_index: u16 = 0,
    alt_pkey_index: u16 = 0,
    en_sqd_async_notify: u8 = 0,
    sq_draining: u8 = 0,
    max_rd_atomic: u8 = 0,
    max_dest_rd_atomic: u8 = 0,
    min_rnr_timer: u8 = 0,
    port_num: u8 = 0,
    timeout: u8 = 0,
    retry_cnt: u8 = 0,
    rnr_retry: u8 = 0,
    alt_port_num: u8 = 0,
    alt_timeout: u8 = 0,
    rate_limit: u32 = 0,
};

pub const PortAttr = extern struct {
    state: u32 = 0,
    max_mtu: u32 = 0,
    active_mtu: u32 = 0,
    gid_tbl_len: c_int = 0,
    port_cap_flags: u32 = 0,
    max_msg_sz: u32 = 0,
    bad_pkey_cntr: u32 = 0,
    qkey_viol_cntr: u32 = 0,
    pkey_tbl_len: u16 = 0,
    lid: u16 = 0,
    sm_lid: u16 = 0,
    lmc: u8 = 0,
    max_vl_num: u8 = 0,
    sm_sl: u8 = 0,
    subnet_timeout: u8 = 0,
    init_type_reply: u8 = 0,
    active_width: u8 = 0,
    active_speed: u8 = 0,
    phys_state: u8 = 0,
    link_layer: u8 = 0,
    flags: u8 = 0,
    port_cap_flags2: u16 = 0,
};

pub const DeviceAttr = extern struct {
    fw_ver: [64]u8 = [_]u8{0} ** 64,
    node_guid: u64 = 0,
    sys_image_guid: u64 = 0,
    max_mr_size: u64 = 0,
    page_size_cap: u64 = 0,
    vendor_id: u32 = 0,
    vendor_part_id: u32 = 0,
    hw_ver: u32 = 0,
    max_qp: c_int = 0,
    max_qp_wr: c_int = 0,
    device_cap_flags: c_uint = 0,
    max_sge: c_int = 0,
    max_sge_rd: c_int = 0,
    max_cq: c_int = 0,
    max_cqe: c_int = 0,
    max_mr: c_int = 0,
    max_pd: c_int = 0,
    max_qp_rd_atom: c_int = 0,
    max_ee_rd_atom: c_int = 0,
    max_res_rd_atom: c_int = 0,
    max_qp_init_rd_atom: c_int = 0,
    max_ee_init_rd_atom: c_int = 0,
    atomic_cap: u32 = 0,
    max_ee: c_int = 0,
    max_rdd: c_int = 0,
    max_mw: c_int = 0,
    max_raw_ipv6_qp: c_int = 0,
    max_raw_ethy_qp: c_int = 0,
    max_mcast_grp: c_int = 0,
    max_mcast_qp_attach: c_int = 0,
    max_total_mcast_qp_attach: c_int = 0,
    max_ah: c_int = 0,
    max_fmr: c_int = 0,
    max_map_per_fmr: c_int = 0,
    max_srq: c_int = 0,
    max_srq_wr: c_int = 0,
    max_srq_sge: c_int = 0,
    max_pkeys: u16 = 0,
    local_ca_ack_delay: u8 = 0,
    phys_port_cnt: u8 = 0,
};

comptime {
    // x86_64 / aarch64 Linux sizes of the structs moonring passes by pointer.
    std.debug.assert(@sizeOf(Sge) == 16);
    std.debug.assert(@sizeOf(RecvWr) == 32);
    std.debug.assert(@sizeOf(Wc) == 48);
    std.debug.assert(@offsetOf(SendWr, "wr") == 40);
    std.debug.assert(@sizeOf(SendWr) == 128);
    std.debug.assert(@sizeOf(Gid) == 16);
}

/// The immediate value of a work request / completion (network byte order on the wire).
pub fn immEncode(value: u32) u32 {
    return std.mem.nativeToBig(u32, value);
}
pub fn immDecode(imm_data: u32) u32 {
    return std.mem.bigToNative(u32, imm_data);
}

/// A GID that carries an IPv4 address (RoCE v2 ::ffff:a.b.c.d).
pub fn gidIpv4(gid: Gid) ?[4]u8 {
    const prefix = [_]u8{0} ** 10 ++ [_]u8{ 0xff, 0xff };
    if (!std.mem.eql(u8, gid.raw[0..12], &prefix)) return null;
    return gid.raw[12..16].*;
}

pub fn gidFromIpv4(ip: [4]u8) Gid {
    var gid = Gid{ .raw = [_]u8{0} ** 16 };
    gid.raw[10] = 0xff;
    gid.raw[11] = 0xff;
    @memcpy(gid.raw[12..16], &ip);
    return gid;
}
