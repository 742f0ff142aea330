// Every collective and p2p, the transport of each pair, and kill -9 mid-allreduce, with the
// ranks in network namespaces as separate hosts and the test verbs provider as their RDMA NIC
// (issue 15): one rank per namespace at 2, 3 and 5 ranks (every link verbs), and 5 ranks on 3
// hosts (ranks 0-1 and 2-3 share one: shm within, verbs across). Run by `npm run test:netns`
// (scripts/test-netns.sh), with the fault suite (tests/fault) in both layouts.
import { netnsWorldSuite } from "../support/netns-suite";

netnsWorldSuite("rank", 2);
netnsWorldSuite("rank", 3);
netnsWorldSuite("rank", 5);
netnsWorldSuite("pairs", 5);
