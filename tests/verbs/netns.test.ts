// Two "hosts" made of network namespaces, two ranks each, on the default transport choice
// (MOONRING_TRANSPORT=auto) with the test verbs provider as the RDMA device: ranks of one
// namespace share a host (shm links), ranks of different namespaces talk RDMA verbs over the
// veth addresses (the provider's GIDs are each namespace's own IPv4 addresses, like RoCE v2).
// Every collective + p2p, the transport of each pair, kill -9 mid-allreduce. The wider layouts
// (one rank per namespace at 2, 3 and 5 ranks, 5 ranks on 3 hosts) and the whole fault suite
// across namespaces run in `npm run test:netns`. Needs root and `ip netns` (skips with a
// message otherwise); every process, namespace and veth made here is removed here.
import { netnsWorldSuite } from "../support/netns-suite";

netnsWorldSuite("pairs", 4);
