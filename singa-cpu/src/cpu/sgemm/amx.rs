//! bf16 products on Intel's AMX tiles (`tdpbf16ps`), where the CPU has them (Sapphire Rapids
//! and later): the same rounded pairs as [`super::bf16`], multiplied a 16 × 16 × 32 block per
//! instruction.
//!
//! Why a second bf16 kernel: on these CPUs `vdpbf16ps` runs at half the rate of an f32 FMA
//! (measured: 95 against 200 GFLOP/s per core), so the AVX-512 BF16 kernel is slower than f32;
//! the tiles do 16 times the work of a `vdpbf16ps` per instruction.
//!
//! A tile holds 16 rows of 64 bytes. `tdpbf16ps C, A, B` takes A as 16 rows of 16 depth pairs
//! (a row per line of op(A), its pairs contiguous) and B as 16 depth pairs of 16 columns (the
//! pair-major layout of [`super::bf16`]'s panels), and adds the 16 × 16 products into f32 C.
//! So A is packed line-major here, B as the AVX-512 BF16 kernel packs it (panels of [`NR`]
//! columns); both depths are padded with zero pairs to whole tiles. Each micro-tile of
//! `32 × 32` C keeps four accumulator tiles, loads two tiles of A and two of B per 16 pairs,
//! and leaves through a small buffer where alpha and beta apply.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly. The kernel
//! asks Linux for the tile state once per process (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); where
//! that fails, AMX is not used.

use super::bf16::vector::pairs_of_16;
use super::bf16::{pack, pair_up, Panels};
use super::{Operand, Workspace, B};
use std::arch::asm;
use std::arch::x86_64::*;

/// Rows of a tile, f32 columns of a C tile, and depth pairs of an A tile.
const TILE: usize = 16;
/// Rows of op(A) per micro-tile (two A tiles).
const MR: usize = 2 * TILE;
/// Columns of op(B) per micro-tile (two B tiles): the width of B's panels.
pub(super) const NR: usize = 2 * TILE;

/// Whether this CPU and OS run the tile kernel: AMX-BF16 and AMX-TILE (with AVX-512 BF16 for
/// the packing), and Linux grants the tile state.
pub(super) fn available() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let edx = __cpuid_count(7, 0).edx;
        let (amx_bf16, amx_tile) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1);
        amx_bf16 && amx_tile && super::bf16::fast() && request_tile_state()
    })
}

/// Asks Linux for permission to use the tile data state in this process (all its threads).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    const SYS_ARCH_PRCTL: isize = 158;
    let ret: isize;
    // SAFETY: the arch_prctl system call with these arguments only changes the process's
    // permitted xsave features; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Depth values per block: tiles take 32 at a time, and a longer block keeps C's tiles in
/// registers longer (A's and B's blocks still fit in L2).
fn depth_block(k: usize) -> usize {
    const MAX: usize = 512;
    let blocks = k.div_ceil(MAX).max(1);
    k.div_ceil(blocks).next_multiple_of(2 * TILE)
}

/// Depth pairs of a block of `kc` values, padded to whole tiles.
fn padded_pairs(kc: usize) -> usize {
    kc.div_ceil(2).next_multiple_of(TILE)
}

/// The packing space of an `m × n × k` product: (f32 values, u32 pairs).
pub(super) fn workspace_size(m: usize, n: usize, k: usize, packer: bool) -> (usize, usize) {
    let kc = depth_block(k);
    let u = (m.next_multiple_of(MR) + n.next_multiple_of(NR)) * padded_pairs(kc);
    let f = if packer {
        kc * n.next_multiple_of(NR)
    } else {
        0
    };
    (f, u)
}

/// The tile configuration: palette 1, eight tiles of 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new() -> Config {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for t in 0..8 {
            bytes[16 + 2 * t] = 64; // bytes per row of tile t (a u16)
            bytes[48 + t] = TILE as u8; // rows of tile t
        }
        Config(bytes)
    }
}

/// `C = alpha · op(A) · op(B) + beta · C` with op(A) and op(B) rounded to bf16, on tiles.
///
/// # Safety
/// As for [`super::gemm_with`]; [`available`] holds and `ws` is reserved by
/// [`workspace_size`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    ws: &mut Workspace,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Operand,
    b: B<'_>,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let config = Config::new();
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    let (m_pad, n_pad) = (m.next_multiple_of(MR), n.next_multiple_of(NR));
    let kc_max = depth_block(k);
    let mut out = Block([0.0; MR * NR]);
    let mut p0 = 0;
    while p0 < k {
        let kc = kc_max.min(k - p0);
        let ps = padded_pairs(kc);
        let beta_block = if p0 == 0 { beta } else { 1.0 };
        let (pa, pb) = ws.pairs.split_at_mut(m_pad * ps);
        lines_of_pairs(pa.as_mut_ptr(), ps, kc, m, !a.trans, |i, p| a.at(i, p0 + p));
        let b_panels = Panels::new(pb, NR, ps);
        match &b {
            B::Stored(s) => pack(b_panels, kc, n, s.trans, |j, p| s.at(p0 + p, j), true),
            B::Packer(packer) => {
                let f = &mut ws.b[..kc * n_pad];
                packer.pack(f, NR, n, kc, p0);
                pair_up(b_panels, f, kc, n, true);
            }
        }
        zero_padding(b_panels, kc, n_pad);
        for j in (0..n).step_by(NR) {
            let bj = b_panels.at(0, j);
            for i in (0..m).step_by(MR) {
                let (steps, ai) = (ps / TILE, (pa.as_ptr().add(i * ps), ps));
                let (rows, cols) = (MR.min(m - i), NR.min(n - j));
                let cij = c.add(i * ldc + j);
                if alpha == 1.0
                    && (beta_block == 0.0 || beta_block == 1.0)
                    && rows == MR
                    && cols == NR
                {
                    // The tiles load and store C themselves.
                    micro_tile(steps, ai, bj, (cij, ldc), beta_block == 1.0);
                } else {
                    micro_tile(steps, ai, bj, (out.0.as_mut_ptr(), NR), false);
                    write_back(&out, cij, ldc, rows, cols, alpha, beta_block);
                }
            }
        }
        p0 += kc;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// A micro-tile of C, as the tiles store it (rows of [`NR`] f32).
#[repr(C, align(64))]
struct Block([f32; MR * NR]);

/// `C = Aₚ · Bₚ (+ C when `add`)` for a 32 × 32 tile of C at `c` (row stride `ldc` f32),
/// over `steps` tiles of depth: A's 32 lines from `a` (line stride `ps` pairs), B's panel
/// from `b` (pair-major, [`NR`] wide).
#[inline(always)]
unsafe fn micro_tile(
    steps: usize,
    (a, ps): (*const u32, usize),
    b: *const u32,
    (c, ldc): (*mut f32, usize),
    add: bool,
) {
    debug_assert!(steps > 0);
    asm!(
        "test {add}, {add}",
        "jz 3f",
        "tileloadd tmm0, [{c0} + {sc}*1]",
        "tileloadd tmm1, [{c0} + {sc}*1 + 64]",
        "tileloadd tmm2, [{c1} + {sc}*1]",
        "tileloadd tmm3, [{c1} + {sc}*1 + 64]",
        "jmp 2f",
        "3:",
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {sa}*1]",
        "tileloadd tmm5, [{a1} + {sa}*1]",
        "tileloadd tmm6, [{b} + {sb}*1]",
        "tileloadd tmm7, [{b} + {sb}*1 + 64]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b}, {b_step}",
        "dec {steps}",
        "jnz 2b",
        "tilestored [{c0} + {sc}*1], tmm0",
        "tilestored [{c0} + {sc}*1 + 64], tmm1",
        "tilestored [{c1} + {sc}*1], tmm2",
        "tilestored [{c1} + {sc}*1 + 64], tmm3",
        add = in(reg) add as usize,
        a0 = inout(reg) a => _,
        a1 = inout(reg) a.add(TILE * ps) => _,
        b = inout(reg) b => _,
        steps = inout(reg) steps => _,
        sa = in(reg) ps * 4,
        sb = in(reg) NR * 4,
        b_step = in(reg) TILE * NR * 4,
        c0 = in(reg) c,
        c1 = in(reg) c.add(TILE * ldc),
        sc = in(reg) ldc * 4,
        options(nostack),
    );
}

/// `C[rows × cols] = alpha · out + beta · C` (C not read when beta is 0).
#[target_feature(enable = "avx512f")]
unsafe fn write_back(
    out: &Block,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
    for r in 0..rows {
        for h in 0..NR / TILE {
            let n = cols.saturating_sub(TILE * h).min(TILE);
            if n == 0 {
                break;
            }
            let mask = ((1u32 << n) - 1) as __mmask16;
            let p = c.add(r * ldc + TILE * h);
            let mut y = _mm512_mul_ps(va, _mm512_loadu_ps(out.0.as_ptr().add(r * NR + TILE * h)));
            if beta != 0.0 {
                y = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, p), y);
            }
            _mm512_mask_storeu_ps(p, mask, y);
        }
    }
}

/// Zeroes the pairs past the depth block (`kc`) up to whole tiles in every panel of B.
unsafe fn zero_padding(panels: Panels, kc: usize, lines: usize) {
    for l in (0..lines).step_by(panels.width) {
        for q in kc.div_ceil(2)..panels.pairs {
            std::ptr::write_bytes(panels.at(q, l), 0, panels.width);
        }
    }
}

/// Packs lines `0..lines` (zero lines up to a multiple of [`MR`]) of op(A), depth `0..kc`,
/// line-major: pair `q` of line `l` at `dst[l · ps + q]`, pairs past the depth zero. `at(l, p)`
/// is the address of line `l` at depth `p`; `along` says a line's depth is contiguous.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn lines_of_pairs(
    dst: *mut u32,
    ps: usize,
    kc: usize,
    lines: usize,
    along: bool,
    at: impl Fn(usize, usize) -> *const f32,
) {
    let padded = lines.next_multiple_of(MR);
    let mask16 = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    if along {
        // Each line's 16 depth values convert to 8 pairs in place.
        for l in 0..padded {
            for q0 in (0..ps).step_by(8) {
                let depth = kc.saturating_sub(2 * q0).min(16);
                let v = if l < lines && depth > 0 {
                    let x = _mm512_maskz_loadu_ps(mask16(depth), at(l, 2 * q0));
                    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x))
                } else {
                    _mm256_setzero_si256()
                };
                _mm256_storeu_si256(dst.add(l * ps + q0).cast(), v);
            }
        }
        return;
    }
    // Lines are contiguous at each depth: 16 lines' pairs at a time, scattered to their rows.
    let rows: [i32; 16] = std::array::from_fn(|i| (i * ps) as i32);
    let rows = _mm512_loadu_si512(rows.as_ptr().cast());
    for q in 0..ps {
        for l0 in (0..padded).step_by(16) {
            let v = if 2 * q < kc {
                pairs_of_16(kc, q, lines.saturating_sub(l0), |p| at(l0, p))
            } else {
                _mm512_setzero_si512()
            };
            _mm512_i32scatter_epi32::<4>(dst.add(l0 * ps + q).cast(), rows, v);
        }
    }
}
