"""Triton kernels. Imported lazily by the op modules (``TRITON_INTERPRET`` is read when a kernel is
defined, so importing late lets tests and users switch the interpreter on first)."""
