//! C ABI exports for CUDA (mr_cuda_*); owned by the CUDA work. Placeholder.
