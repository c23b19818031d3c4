"""An engine process keeps the memory a batch frees for the next one (workers/native_heap.py),
seen in glibc's own account of its heap."""

import subprocess
import sys

from tests.conftest import ROOT

# Run in a process of its own: the settings stay with the process that takes them. It mallocs
# and frees a 48 MiB block (a large vocabulary's logits for a batch; above the largest mmap
# threshold older glibc releases take) and prints glibc's account (mallinfo2): bytes in mapped
# blocks while it is held, and the heap's size once it is freed.
PROBE = """
import ctypes, sys
from workers.native_heap import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
kept = keep_freed_memory(int(sys.argv[1]))
block = libc.malloc(48 << 20)
ctypes.memset(block, 1, 48 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(kept, mapped >= 48 << 20, libc.mallinfo2().arena >= 48 << 20)
"""


def probe(keep_bytes: int) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(keep_bytes)], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


class NativeHeapTests:
    def test_a_freed_block_stays_in_the_heap_for_the_next_allocation(self):
        kept, mapped, heap_holds_it = probe(64 << 20)
        assert (kept, mapped, heap_holds_it) == ("True", "False", "True")

    def test_without_it_glibc_maps_the_block_and_gives_it_back(self):
        kept, mapped, heap_holds_it = probe(0)
        assert (kept, mapped, heap_holds_it) == ("False", "True", "False")

    def test_a_setting_out_of_range_stops_the_start_with_its_reason(self):
        import os

        env = dict(os.environ, DJANGO_SETTINGS_MODULE="cs_portal.settings", TRANSLATION_ENGINE_HEAP_KEEP_MB="4096")
        result = subprocess.run([sys.executable, "-c", "import cs_portal.settings"], cwd=ROOT, env=env,
                                capture_output=True, text=True)
        assert result.returncode != 0
        assert "TRANSLATION_ENGINE_HEAP_KEEP_MB must be 0..2047 (MiB), not 4096" in result.stderr

    def test_a_c_library_that_refuses_a_large_mmap_threshold_gets_the_largest_it_takes(self, monkeypatch):
        """Older glibc releases refuse an mmap threshold above 32 MiB: the setting falls back to
        that, still keeping the heap's top; one that refuses everything changes nothing."""
        from workers import native_heap

        class OlderLibc:
            def __init__(self, refuse_all: bool = False) -> None:
                self.set, self.refuse_all = [], refuse_all

                def mallopt(parameter, value):
                    refused = refuse_all or (parameter == native_heap.M_MMAP_THRESHOLD
                                             and value > native_heap.MMAP_THRESHOLD_OLD_MAX)
                    if not refused:
                        self.set.append((parameter, value))
                    return 0 if refused else 1

                self.mallopt = mallopt

        older = OlderLibc()
        monkeypatch.setattr(native_heap, "_libc", lambda: older)
        assert native_heap.keep_freed_memory(1 << 30)
        assert older.set == [(native_heap.M_MMAP_THRESHOLD, 32 << 20), (native_heap.M_TRIM_THRESHOLD, 1 << 30)]

        refusing = OlderLibc(refuse_all=True)
        monkeypatch.setattr(native_heap, "_libc", lambda: refusing)
        assert not native_heap.keep_freed_memory(1 << 30)
        assert refusing.set == []
