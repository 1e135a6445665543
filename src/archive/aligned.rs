//! Page-aligned WAL batches: the unit the receive loop hands to the archive writer.
//!
//! A batch holds contiguous WAL starting at some LSN, laid out so that the memory address
//! of every byte is congruent to its segment offset modulo [`DIRECT_ALIGN`]. Whatever part
//! of the batch covers whole pages of the segment is then also page-aligned in memory, and
//! the segment writer can hand it to `O_DIRECT` as it is: no bounce copy.

/// Alignment of offsets, lengths and memory for direct I/O: a page satisfies every
/// device's logical block size.
pub const DIRECT_ALIGN: usize = 4096;

/// Batches at least this large live in transparent huge pages where the kernel allows:
/// pinning a batch for a direct write then takes one page reference per 2 MiB instead of
/// 512, and the write reaches the device as one request instead of being split at the
/// device's segment limit.
const HUGE_PAGE: usize = 2 << 20;

/// Zeroed memory aligned to [`HUGE_PAGE`], mapped for the buffer alone and advised to the
/// kernel as huge-page memory before anything touches it (a page touched first is a small
/// page for good).
struct HugeMem {
    /// The whole mapping.
    map: *mut libc::c_void,
    map_len: usize,
    /// The aligned part used.
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `HugeMem` owns its mapping exclusively, like a `Vec<u8>` owns its allocation.
unsafe impl Send for HugeMem {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for HugeMem {}

impl HugeMem {
    /// `None` when the mapping fails (the caller falls back to ordinary memory).
    fn new(len: usize) -> Option<Self> {
        let len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let map_len = len + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let skip = (map as usize).next_multiple_of(HUGE_PAGE) - map as usize;
        // SAFETY: `skip < HUGE_PAGE`, so `skip + len <= map_len`: inside the mapping.
        let ptr = unsafe { map.cast::<u8>().add(skip) };
        // SAFETY: the range lies inside the mapping. Advice only: a kernel without
        // transparent huge pages refuses it and the memory works the same.
        unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        Some(HugeMem {
            map,
            map_len,
            ptr,
            len,
        })
    }
}

impl Drop for HugeMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

impl std::ops::Deref for HugeMem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes of the mapping (zero-filled by the kernel), owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for HugeMem {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

enum Mem {
    Small(Vec<u8>),
    Huge(HugeMem),
}

impl std::ops::Deref for Mem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mem::Small(v) => v,
            Mem::Huge(h) => h,
        }
    }
}

impl std::ops::DerefMut for Mem {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Mem::Small(v) => v,
            Mem::Huge(h) => h,
        }
    }
}

/// A fixed-capacity buffer of WAL whose bytes sit at their segment offset's phase.
pub struct AlignedBuf {
    /// Over-allocated by `DIRECT_ALIGN` so an aligned window of `cap` bytes fits inside
    /// (huge-page memory is aligned already).
    mem: Mem,
    /// Where the aligned window starts in `mem`.
    base: usize,
    /// Capacity of the window.
    cap: usize,
    /// Where the data starts in the window (`0..DIRECT_ALIGN`): the phase of its first byte.
    head: usize,
    /// Bytes of data after `head`.
    len: usize,
}

impl AlignedBuf {
    /// A buffer whose window is `cap` bytes (a multiple of `DIRECT_ALIGN`); data starting
    /// at phase `p` fits `cap - p` bytes.
    pub fn new(cap: usize) -> Self {
        assert!(
            cap % DIRECT_ALIGN == 0 && cap > DIRECT_ALIGN,
            "capacity {cap} is not a multiple of {DIRECT_ALIGN}"
        );
        let huge = (cap >= HUGE_PAGE / 2).then(|| HugeMem::new(cap)).flatten();
        let (mem, base) = match huge {
            Some(h) => (Mem::Huge(h), 0),
            None => {
                let mem = vec![0u8; cap + DIRECT_ALIGN];
                let base = mem.as_ptr().align_offset(DIRECT_ALIGN);
                (Mem::Small(mem), base)
            }
        };
        AlignedBuf {
            mem,
            base,
            cap,
            head: 0,
            len: 0,
        }
    }

    /// Empty the buffer for data whose first byte has segment offset `first_offset`.
    pub fn reset(&mut self, first_offset: u64) {
        self.head = (first_offset % DIRECT_ALIGN as u64) as usize;
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn spare(&self) -> usize {
        self.cap - self.head - self.len
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        let start = self.base + self.head;
        &self.mem[start..start + self.len]
    }

    /// Append `data` (at most [`AlignedBuf::spare`] bytes); returns the appended bytes in
    /// their new place.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> &[u8] {
        assert!(data.len() <= self.spare(), "batch overflow");
        self.spare_mut()[..data.len()].copy_from_slice(data);
        self.commit(data.len())
    }

    /// The room after the data, to be filled in place (e.g. by a socket read) and then
    /// added with [`AlignedBuf::commit`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let at = self.base + self.head + self.len;
        let end = self.base + self.cap;
        &mut self.mem[at..end]
    }

    /// Add the first `n` bytes of the room to the data; returns them.
    pub fn commit(&mut self, n: usize) -> &[u8] {
        assert!(n <= self.spare(), "batch overflow");
        let at = self.base + self.head + self.len;
        self.len += n;
        &self.mem[at..at + n]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sit_at_their_segment_phase() {
        let mut b = AlignedBuf::new(4 * DIRECT_ALIGN);
        for first in [0u64, 1, 4095, 4096, 8192 + 100, (16 << 20) + 30] {
            b.reset(first);
            assert!(b.is_empty());
            let added = b.extend_from_slice(&[7u8; 5000]);
            let phase = added.as_ptr() as usize % DIRECT_ALIGN;
            assert_eq!(phase as u64, first % DIRECT_ALIGN as u64, "first {first}");
            assert_eq!(b.as_slice(), &[7u8; 5000][..]);
            assert_eq!(b.spare(), 4 * DIRECT_ALIGN - phase - 5000);
        }
    }

    #[test]
    fn filling_in_place_is_the_same_as_copying() {
        let mut a = AlignedBuf::new(2 * DIRECT_ALIGN);
        let mut b = AlignedBuf::new(2 * DIRECT_ALIGN);
        a.reset(100);
        b.reset(100);
        a.extend_from_slice(b"hello, ");
        a.extend_from_slice(b"wal");
        b.spare_mut()[..7].copy_from_slice(b"hello, ");
        assert_eq!(b.commit(7), b"hello, ");
        b.spare_mut()[..3].copy_from_slice(b"wal");
        b.commit(3);
        assert_eq!(a.as_slice(), b.as_slice());
        assert_eq!(b.spare(), 2 * DIRECT_ALIGN - 100 - 10);
        assert_eq!(b.spare_mut().len(), b.spare());
    }

    #[test]
    fn large_batches_are_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(1 << 20);
        assert_eq!(b.mem.as_ptr() as usize % HUGE_PAGE, 0);
        b.reset(8192 + 17);
        assert_eq!(b.spare(), (1 << 20) - 17);
        assert!(b.spare_mut().iter().all(|&x| x == 0));
        let added = b.extend_from_slice(&[9u8; 70000]);
        assert_eq!(added.as_ptr() as usize % DIRECT_ALIGN, 17);
    }

    #[test]
    #[should_panic(expected = "batch overflow")]
    fn overfilling_is_a_bug_not_a_silent_truncation() {
        let mut b = AlignedBuf::new(2 * DIRECT_ALIGN);
        b.reset(10);
        b.extend_from_slice(&[0u8; 2 * DIRECT_ALIGN]);
    }
}
