"""Re-implementations of other libraries' kernels, timed next to ours in bench/."""
