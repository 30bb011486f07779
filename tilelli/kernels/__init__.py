"""Optional native kernels, compiled on first use; every one has a PyTorch fallback."""
