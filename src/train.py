"""`python -m train ...` — the widthlab command line (see widthlab.cli)."""
import os
import sys

# glibc gives every freed block over 32 MiB back to the kernel and maps it afresh on the next step; on a CPU the
# logits of one step (32 × 128 tokens × 2048 vocabulary × 4 bytes) are exactly that size, so a third of each step
# went to page faults. A higher mmap threshold keeps such blocks in the heap: 1.5× tokens/s at d = 8, 1.5× at
# d = 128, bit-identical losses (docs/benchmarks.md). glibc reads its tunables only at start-up, hence one re-exec.
_TUNE = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
if __name__ == "__main__" and sys.platform.startswith("linux") and "mmap_threshold" not in os.environ.get(
        "GLIBC_TUNABLES", "") and not os.environ.get("WIDTHLAB_NO_MALLOC_TUNE"):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), _TUNE]))
    os.execv(sys.executable, sys.orig_argv)

from widthlab.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
