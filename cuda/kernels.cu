// placeholder, replaced by the CUDA kernels work
#include "ops_table.cuh"
extern "C" __global__ void mr_noop() {}
