"""Pure-PyTorch references: the definition of correctness for every kernel.

Written for clarity, never edited to agree with a kernel. Each module mirrors an op family.
"""
