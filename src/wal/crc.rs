//! CRC-32C of WAL records, the hot spot of validation. Most records are around 100 bytes,
//! where the `crc32c` crate's per-call set-up (feature test, alignment split, table-driven
//! 3-way interleave meant for kilobytes) costs as much as the CRC itself. So short records
//! get straight runs of SSE 4.2 `crc32` instructions, inlined into the decoder's fast loop,
//! three records side by side: one record's CRC is a single chain of dependent instructions
//! (latency 3, throughput 1), and running three chains at once fills the gaps. That holds
//! for kilobyte records too (decoding WAL of 1 KiB rows went from 4.3 to 5.1 GiB/s); only a long
//! record alone, or the long rest of one next to shorter ones, goes to the crate's
//! interleaved code.

/// Length of a rest from which one record's CRC goes to the crate's interleaved code.
pub(crate) const LONG: usize = 1024;

/// Whether this CPU can run the SSE 4.2 kernels; tested once per decoder.
pub(crate) fn sse42_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// CRC-32C over `payload`, then the first 20 bytes of `header` (xlogreader.c
/// ValidXLogRecord's order), without special instructions.
#[inline]
pub(crate) fn record_portable(payload: &[u8], header: &[u8]) -> u32 {
    super::record::record_crc(payload, header)
}

/// The SSE 4.2 kernels. They are `#[inline(always)]` so that they compile into the caller,
/// which must itself be compiled with `#[target_feature(enable = "sse4.2")]` (and so only
/// run where [`sse42_available`] said yes).
#[cfg(target_arch = "x86_64")]
pub(crate) mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    use super::LONG;

    use crate::wal::page::{le_u16, le_u32, le_u64 as u64_at};

    /// Continues the complemented CRC `crc` (the register value inside crc32c) over the
    /// whole 8-byte words of `p` from byte `from`, then the rest of `p`, then the 20 header
    /// bytes of `h`; returns the finished CRC.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2.
    #[inline(always)]
    unsafe fn finish(mut crc: u64, p: &[u8], from: usize, h: &[u8]) -> u32 {
        let mut c = if p.len() - from >= LONG {
            // A long rest (a long record alone, or records of uneven length side by side)
            // runs faster through the crate's interleaved code than as one dependent chain.
            !crc32c::crc32c_append(!(crc as u32), &p[from..])
        } else {
            let whole = p.len() / 8 * 8;
            let mut i = from;
            while i < whole {
                crc = _mm_crc32_u64(crc, u64_at(p, i));
                i += 8;
            }
            tail(crc as u32, &p[whole..])
        };
        let mut crc = u64::from(c);
        crc = _mm_crc32_u64(crc, u64_at(h, 0));
        crc = _mm_crc32_u64(crc, u64_at(h, 8));
        c = _mm_crc32_u32(crc as u32, le_u32(h, 16));
        !c
    }

    /// Continues `c` over the last 0..=7 bytes of a payload.
    #[inline(always)]
    unsafe fn tail(mut c: u32, tail: &[u8]) -> u32 {
        let mut t = 0;
        if tail.len() >= 4 {
            c = _mm_crc32_u32(c, le_u32(tail, 0));
            t = 4;
        }
        if tail.len() - t >= 2 {
            c = _mm_crc32_u16(c, le_u16(tail, t));
            t += 2;
        }
        if tail.len() > t {
            c = _mm_crc32_u8(c, tail[t]);
        }
        c
    }

    /// The CRC of one record: `p` the payload, `h` the header (at least 20 bytes).
    ///
    /// # Safety
    /// The CPU must support SSE 4.2.
    #[inline(always)]
    pub(crate) unsafe fn record(p: &[u8], h: &[u8]) -> u32 {
        finish(0xFFFF_FFFF, p, 0, h)
    }

    /// The CRCs of two records, their chains side by side over the words they both have
    /// (two independent chains run at twice the speed of one).
    ///
    /// # Safety
    /// The CPU must support SSE 4.2.
    #[inline(always)]
    pub(crate) unsafe fn records2(p: [&[u8]; 2], h: [&[u8]; 2]) -> [u32; 2] {
        let words = p[0].len().min(p[1].len()) / 8 * 8;
        let (mut c0, mut c1) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        // Zipped exact chunks: no bounds check inside the loop.
        for (a, b) in p[0][..words]
            .chunks_exact(8)
            .zip(p[1][..words].chunks_exact(8))
        {
            c0 = _mm_crc32_u64(c0, u64_at(a, 0));
            c1 = _mm_crc32_u64(c1, u64_at(b, 0));
        }
        [finish(c0, p[0], words, h[0]), finish(c1, p[1], words, h[1])]
    }

    /// The CRCs of three records, as [`records2`]: three chains keep the `crc32` unit busy
    /// every cycle (latency 3, throughput 1), the most this instruction can do.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2.
    #[inline(always)]
    pub(crate) unsafe fn records3(p: [&[u8]; 3], h: [&[u8]; 3]) -> [u32; 3] {
        let words = p[0].len().min(p[1].len()).min(p[2].len()) / 8 * 8;
        let (mut c0, mut c1, mut c2) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        let (q0, q1, q2) = (&p[0][..words], &p[1][..words], &p[2][..words]);
        let words3 = q0
            .chunks_exact(8)
            .zip(q1.chunks_exact(8))
            .zip(q2.chunks_exact(8));
        for ((a, b), c) in words3 {
            c0 = _mm_crc32_u64(c0, u64_at(a, 0));
            c1 = _mm_crc32_u64(c1, u64_at(b, 0));
            c2 = _mm_crc32_u64(c2, u64_at(c, 0));
        }
        [
            finish(c0, p[0], words, h[0]),
            finish(c1, p[1], words, h[1]),
            finish(c2, p[2], words, h[2]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn one(p: &[u8], h: &[u8]) -> u32 {
        sse42::record(p, h)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn three(p: [&[u8]; 3], h: [&[u8]; 3]) -> [u32; 3] {
        sse42::records3(p, h)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn two(p: [&[u8]; 2], h: [&[u8]; 2]) -> [u32; 2] {
        sse42::records2(p, h)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn kernels_match_the_reference() {
        if !sse42_available() {
            eprintln!("skipped: no SSE 4.2");
            return;
        }
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 131 % 251) as u8).collect();
        let header: Vec<u8> = (0..24u8).map(|i| i.wrapping_mul(37)).collect();
        for len in (0..300).chain([1023, 1024, 1025, 2999]) {
            for start in 0..3 {
                let p = &data[start..start + len];
                // SAFETY: SSE 4.2 is available (checked above).
                let got = unsafe { one(p, &header) };
                assert_eq!(got, record_portable(p, &header), "len {len} start {start}");
            }
        }
        for (a, b, c) in [
            (0, 0, 0),
            (68, 68, 68),
            (68, 3, 200),
            (7, 300, 1000),
            (1023, 8, 64),
            (1075, 1075, 1075),
            (1100, 1024, 1090),
            (5000, 100, 2000),
            (8100, 8100, 1023),
        ] {
            let p = [&data[..a], &data[5..5 + b], &data[9..9 + c]];
            let h = [&header[..], &header[1..21], &header[4..]];
            let want: [u32; 3] = std::array::from_fn(|i| record_portable(p[i], h[i]));
            // SAFETY: SSE 4.2 is available (checked above).
            assert_eq!(unsafe { three(p, h) }, want, "{a} {b} {c}");
            // SAFETY: as above.
            let got = unsafe { two([p[2], p[0]], [h[2], h[0]]) };
            assert_eq!(got, [want[2], want[0]], "{c} {a}");
        }
        // The CRC-32C check value: "123456789" -> E3069283.
        // SAFETY: SSE 4.2 is available (checked above).
        let got = unsafe { one(b"123456789", &header) };
        assert_eq!(got, crc32c::crc32c_append(0xE306_9283, &header[..20]));
    }
}
