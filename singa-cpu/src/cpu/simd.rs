//! Runs a kernel compiled for the widest vector instructions the CPU has.
//!
//! The kernels are plain Rust loops over fixed-size chunks, written so that LLVM vectorises
//! them. [`simd`] calls the kernel through a function compiled with AVX-512 (or AVX2 + FMA)
//! enabled; because the kernel closures and the helpers they call are `#[inline(always)]`, their
//! bodies are compiled inside that function with those instructions. Without such a CPU, the
//! same code runs as baseline x86-64 (SSE2) or on other architectures.

/// Runs `f` compiled for the best instruction set available.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == Level::Avx512 {
            // SAFETY: the CPU supports every feature the function enables (checked by `level`).
            return unsafe { with_avx512(f) };
        }
        if level() == Level::Avx2 {
            // SAFETY: as above.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// The vector instruction sets the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F/BW/DQ/VL.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The architecture's baseline.
    Baseline,
}

/// The best level this CPU supports (detected once).
pub fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
