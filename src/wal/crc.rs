//! CRC-32C of WAL records, the hot spot of validation. Most records are around 100 bytes,
//! where the `crc32c` crate's per-call set-up (feature test, alignment split, table-driven
//! 3-way interleave meant for kilobytes) costs as much as the CRC itself. So records get
//! straight runs of SSE 4.2 `crc32` instructions, inlined into the decoder's fast loop,
//! three records side by side: one record's CRC is a single chain of dependent instructions
//! (latency 3, throughput 1), and running three chains at once fills the gaps. What a
//! record has beyond the shortest of its group (a 1 KiB row next to a 64-byte index
//! insert), and every piece of a record that crosses a page, is split in three lanes
//! run side by side and joined with two carry-less multiplies (PCLMULQDQ): the crc32 unit
//! stays busy on long records too, with no call into the crate.

/// Rest of a record (or piece) from which it is split in three lanes: below it, one chain
/// next to the other records of its group is as fast and the join would cost more.
const SPLIT_MIN: usize = 192;
/// Most words per lane. A longer run goes in blocks of three lanes of this many words
/// (1008 bytes) one after the other: three lanes far apart, each its own stream from
/// memory, ran at less than half the speed (WAL of 8 KiB records read from memory: 2.2 ms
/// a pass with the crate, 4.7 ms with three lanes of up to a page each, on a 2-core AMD
/// EPYC VM).
const LANE_WORDS: usize = 42;

/// Whether this CPU can run the kernels (SSE 4.2 and PCLMULQDQ); tested once per decoder.
pub(crate) fn hw_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.2")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
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

/// Continues the CRC register `reg` (the complemented running CRC, `!0` at the start of a
/// record) over `p`, without special instructions.
#[inline]
pub(crate) fn append_portable(reg: u32, p: &[u8]) -> u32 {
    !crc32c::crc32c_append(!reg, p)
}

/// Bit-reflected CRC-32C polynomial.
const POLY: u32 = 0x82F6_3B78;

/// `SHIFT[i]` is x^(64i - 33) mod P, bit-reflected: a carry-less multiply of a CRC register
/// by it, reduced by one `crc32` of the 64-bit product, moves that register over 8i zero
/// bytes (x^(64i) mod P; the product is one bit off, and the reduction adds x^32). Joining
/// lanes is that move plus an XOR, CRC-32C being linear.
static SHIFT: [u32; 2 * LANE_WORDS + 1] = shift_table();

const fn shift_table() -> [u32; 2 * LANE_WORDS + 1] {
    let mut t = [0u32; 2 * LANE_WORDS + 1];
    // x^31 (bit 0 in reflected order), then 64 multiplications by x per entry.
    let mut v: u32 = 1;
    let mut i = 1;
    while i < t.len() {
        t[i] = v;
        let mut k = 0;
        while k < 64 {
            v = if v & 1 != 0 { (v >> 1) ^ POLY } else { v >> 1 };
            k += 1;
        }
        i += 1;
    }
    t
}

/// The kernels. They are `#[inline(always)]` so that they compile into the caller, which
/// must itself be compiled with `#[target_feature(enable = "sse4.2,pclmulqdq")]` (and so
/// only run where [`hw_available`] said yes).
#[cfg(target_arch = "x86_64")]
pub(crate) mod hw {
    use std::arch::x86_64::{
        _mm_clmulepi64_si128, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8,
        _mm_cvtsi128_si64, _mm_cvtsi64_si128, _mm_xor_si128,
    };

    use super::{LANE_WORDS, SHIFT, SPLIT_MIN};

    use crate::wal::record::RECORD_HEADER;

    use crate::wal::page::{le_u16, le_u32, le_u64 as u64_at};

    /// Continues the CRC register `reg` over `p`: long runs in three lanes joined by
    /// carry-less multiplies, the rest (and short runs) as one chain.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    pub(crate) unsafe fn append(reg: u32, mut p: &[u8]) -> u32 {
        let mut crc = u64::from(reg);
        while p.len() >= SPLIT_MIN {
            // Lanes a, b, c of `w` words each, then the rest of `p`.
            let w = (p.len() / 24).min(LANE_WORDS);
            let (a, rest) = p.split_at(8 * w);
            let (b, rest) = rest.split_at(8 * w);
            let (c, rest) = rest.split_at(8 * w);
            let (mut ca, mut cb, mut cc) = (crc, 0u64, 0u64);
            let lanes = a
                .chunks_exact(8)
                .zip(b.chunks_exact(8))
                .zip(c.chunks_exact(8));
            for ((x, y), z) in lanes {
                ca = _mm_crc32_u64(ca, u64_at(x, 0));
                cb = _mm_crc32_u64(cb, u64_at(y, 0));
                cc = _mm_crc32_u64(cc, u64_at(z, 0));
            }
            // a moves over b and c (2w words), b over c (w words); one reduction for both.
            let ma = _mm_clmulepi64_si128(
                _mm_cvtsi64_si128(ca as i64),
                _mm_cvtsi64_si128(i64::from(SHIFT[2 * w])),
                0,
            );
            let mb = _mm_clmulepi64_si128(
                _mm_cvtsi64_si128(cb as i64),
                _mm_cvtsi64_si128(i64::from(SHIFT[w])),
                0,
            );
            let m = _mm_cvtsi128_si64(_mm_xor_si128(ma, mb)) as u64;
            crc = _mm_crc32_u64(0, m) ^ cc;
            p = rest;
        }
        let whole = p.len() / 8 * 8;
        for x in p[..whole].chunks_exact(8) {
            crc = _mm_crc32_u64(crc, u64_at(x, 0));
        }
        tail(crc as u32, &p[whole..])
    }

    /// Continues the complemented CRC `crc` (the register value inside crc32c) over `p`
    /// from byte `from`, then the first 20 bytes of the record header `h`; returns the
    /// finished CRC.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    unsafe fn finish(crc: u64, p: &[u8], from: usize, h: &[u8; RECORD_HEADER]) -> u32 {
        !header(append(crc as u32, &p[from..]), h)
    }

    /// Continues the register `c` over the 20 bytes of the record header `h` that the CRC
    /// covers (all but xl_crc).
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    pub(crate) unsafe fn header(c: u32, h: &[u8; RECORD_HEADER]) -> u32 {
        let mut crc = u64::from(c);
        crc = _mm_crc32_u64(crc, u64_at(h, 0));
        crc = _mm_crc32_u64(crc, u64_at(h, 8));
        _mm_crc32_u32(crc as u32, le_u32(h, 16))
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

    /// The CRC of one record: `p` the payload, `h` the header.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    pub(crate) unsafe fn record(p: &[u8], h: &[u8; RECORD_HEADER]) -> u32 {
        finish(0xFFFF_FFFF, p, 0, h)
    }

    /// The CRCs of two records, their chains side by side over the words they both have
    /// (two independent chains run at twice the speed of one).
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    pub(crate) unsafe fn records2(p: [&[u8]; 2], h: [&[u8; RECORD_HEADER]; 2]) -> [u32; 2] {
        let words = p[0].len().min(p[1].len()) / 8 * 8;
        let (mut c0, mut c1) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        // Zipped exact chunks stop at the shorter: no bounds check inside the loop.
        for (a, b) in p[0].chunks_exact(8).zip(p[1].chunks_exact(8)) {
            c0 = _mm_crc32_u64(c0, u64_at(a, 0));
            c1 = _mm_crc32_u64(c1, u64_at(b, 0));
        }
        [finish(c0, p[0], words, h[0]), finish(c1, p[1], words, h[1])]
    }

    /// The CRCs of three records, as [`records2`]: three chains keep the `crc32` unit busy
    /// every cycle (latency 3, throughput 1), the most this instruction can do.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[inline(always)]
    pub(crate) unsafe fn records3(p: [&[u8]; 3], h: [&[u8; RECORD_HEADER]; 3]) -> [u32; 3] {
        let words = p[0].len().min(p[1].len()).min(p[2].len()) / 8 * 8;
        let (mut c0, mut c1, mut c2) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        let words3 = p[0]
            .chunks_exact(8)
            .zip(p[1].chunks_exact(8))
            .zip(p[2].chunks_exact(8));
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

    /// Test data: no run of equal words, so a lane joined at the wrong offset shows.
    fn data() -> Vec<u8> {
        (0..21_000u32).map(|i| (i * 131 % 251) as u8).collect()
    }

    /// The carry-less product, bit by bit.
    fn clmul(a: u32, b: u32) -> u64 {
        (0..32)
            .filter(|i| b >> i & 1 != 0)
            .fold(0, |m, i| m ^ (u64::from(a) << i))
    }

    #[test]
    fn the_shift_table_moves_a_register_over_zero_bytes() {
        // Portable: the `crc32` reduction of a 64-bit value is the register 0 run over its
        // eight bytes.
        for (i, &k) in SHIFT.iter().enumerate().skip(1) {
            for reg in [1u32, 0x8000_0000, 0xDEAD_BEEF, !0] {
                let moved = append_portable(0, &clmul(reg, k).to_le_bytes());
                let want = append_portable(reg, &vec![0; 8 * i]);
                assert_eq!(moved, want, "SHIFT[{i}], register {reg:#x}");
            }
        }
    }

    #[test]
    fn portable_pieces_make_the_record_crc() {
        let data = data();
        let header: Vec<u8> = (0..24u8).map(|i| i.wrapping_mul(37)).collect();
        for (len, cut) in [(0, 0), (1, 1), (100, 3), (9000, 8168), (20_000, 7)] {
            let p = &data[..len];
            let reg = append_portable(append_portable(!0, &p[..cut]), &p[cut..]);
            let got = !append_portable(reg, &header[..20]);
            assert_eq!(got, record_portable(p, &header), "len {len} cut {cut}");
        }
    }

    /// Fails where the kernels cannot run, unless WALFERRY_TEST_ALLOW_NO_SSE42=1 says that
    /// this machine is known to lack them: a CI machine without them must not pass silently
    /// with the portable path only.
    fn hw_or_allowed() -> bool {
        if hw_available() {
            return true;
        }
        let allowed = std::env::var("WALFERRY_TEST_ALLOW_NO_SSE42").is_ok_and(|v| v == "1");
        assert!(
            allowed,
            "this CPU lacks SSE 4.2 or PCLMULQDQ, so the CRC kernels are not tested\n\
             HINT: set WALFERRY_TEST_ALLOW_NO_SSE42=1 on a machine known to lack them"
        );
        eprintln!("not run: no SSE 4.2 and PCLMULQDQ (WALFERRY_TEST_ALLOW_NO_SSE42=1)");
        false
    }

    #[test]
    fn kernels_match_the_reference() {
        if !hw_or_allowed() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        kernels::match_the_reference();
    }

    #[cfg(target_arch = "x86_64")]
    mod kernels {
        use super::super::*;
        use super::data;

        #[target_feature(enable = "sse4.2,pclmulqdq")]
        unsafe fn one(p: &[u8], h: &[u8; 24]) -> u32 {
            hw::record(p, h)
        }

        #[target_feature(enable = "sse4.2,pclmulqdq")]
        unsafe fn two(p: [&[u8]; 2], h: [&[u8; 24]; 2]) -> [u32; 2] {
            hw::records2(p, h)
        }

        #[target_feature(enable = "sse4.2,pclmulqdq")]
        unsafe fn three(p: [&[u8]; 3], h: [&[u8; 24]; 3]) -> [u32; 3] {
            hw::records3(p, h)
        }

        #[target_feature(enable = "sse4.2,pclmulqdq")]
        unsafe fn append(reg: u32, p: &[u8]) -> u32 {
            hw::append(reg, p)
        }

        /// The CPU has the kernels' features (the caller checked).
        pub(super) fn match_the_reference() {
            let data = data();
            let header: [u8; 24] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
            // Around the split threshold, one block of lanes, several, and a split rest.
            let lens = (0..300)
                .chain((500..600).step_by(7))
                .chain([1007, 1008, 1009, 1199, 1200, 1201, 2016, 2999, 8168, 20_000]);
            for len in lens {
                for start in 0..3 {
                    let p = &data[start..start + len];
                    // SAFETY: the caller checked the CPU features.
                    let got = unsafe { one(p, &header) };
                    assert_eq!(got, record_portable(p, &header), "len {len} start {start}");
                    for reg in [0, 0x1234_5678, !0] {
                        // SAFETY: as above.
                        let got = unsafe { append(reg, p) };
                        assert_eq!(got, append_portable(reg, p), "len {len} reg {reg:#x}");
                    }
                }
            }
            for (a, b, c) in [
                (0, 0, 0),
                (68, 68, 68),
                (68, 3, 200),
                (7, 300, 1000),
                (1023, 8, 64),
                (1048, 40, 1048),
                (1075, 1075, 1075),
                (1100, 1024, 1090),
                (5000, 100, 2000),
                (8100, 8100, 1023),
            ] {
                let p = [&data[..a], &data[5..5 + b], &data[9..9 + c]];
                let (h1, h2) = (header.map(|b| b ^ 0x5A), header.map(|b| b.rotate_left(3)));
                let h = [&header, &h1, &h2];
                let want: [u32; 3] = std::array::from_fn(|i| record_portable(p[i], h[i]));
                // SAFETY: the caller checked the CPU features.
                assert_eq!(unsafe { three(p, h) }, want, "{a} {b} {c}");
                // SAFETY: as above.
                let got = unsafe { two([p[2], p[0]], [h[2], h[0]]) };
                assert_eq!(got, [want[2], want[0]], "{c} {a}");
            }
            // The CRC-32C check value: "123456789" -> E3069283.
            // SAFETY: as above.
            let got = unsafe { one(b"123456789", &header) };
            assert_eq!(got, crc32c::crc32c_append(0xE306_9283, &header[..20]));
        }
    }
}
