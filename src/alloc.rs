//! The process allocator: the system one, except that very large allocations are reserved lazily.
//!
//! Why: the Kafka codecs reserve `Vec::with_capacity(n)` for an array before reading its
//! elements, with `n` taken from the wire. A 16-byte request announcing 2^31 topics asks for
//! ~150 GB; the system allocator refuses, and Rust aborts the process on a refused allocation.
//! Reserving such a block with `MAP_NORESERVE` succeeds without committing memory, the decoder
//! then fails on the missing bytes, the broker closes that one connection, and the block is
//! unmapped. Memory that is really written is committed page by page as usual.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily.
const LAZY_FROM: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct LazyHugeAlloc;

impl LazyHugeAlloc {
    fn is_lazy(layout: &Layout) -> bool {
        layout.size() >= LAZY_FROM && layout.align() <= PAGE
    }
}

// SAFETY: small allocations go to `System` unchanged. Huge ones come from a fresh private
// anonymous mapping, which is page-aligned (enough for any `align <= PAGE`), zero-filled, at least
// `size` long, and owned by nobody else; `dealloc` unmaps exactly what `alloc` mapped, because both
// decide by the same `is_lazy(layout)` on the layout the caller must pass back unchanged.
unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::is_lazy(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous mapping touches no existing memory; failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::is_lazy(&layout) {
            // SAFETY: `ptr` came from our mmap of exactly `layout.size()` bytes.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` forms a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !Self::is_lazy(&layout) && !Self::is_lazy(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block, the overlap copied, the old block freed with its own layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
