//! Denormal floats flushed to zero while a training step runs (MXCSR's FTZ and DAZ bits),
//! as TensorFlow runs all its CPU threads (XLA's `llvm_compiler.cc` says so where it turns
//! them off for compiling).
//!
//! Training the tutorial to a loss of 0.0000 leaves Adam's second moments of many weights
//! denormal, and on the host of 2026-12-05 every square root and division that touched
//! one took a microcode assist: `lstmc run` spent 77% of its time in the updates and took
//! 10.1 s at one thread where its 2000 epochs of the same steps on random data take 4.5 s
//! (7.4 s at two threads). Flushed, 4.8 s (4.4 s). What changes is below 1.2e-38: a
//! moment that would be denormal is zero, and `√v + ε` is `ε` either way.

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// While alive, this thread flushes denormals; restores the previous mode when dropped.
pub(crate) struct Denormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl Denormals {
    /// Flushes denormals on this thread until the guard is dropped.
    pub(crate) fn flushed() -> Denormals {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = csr();
            set_csr(saved | FTZ_DAZ);
            Denormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Denormals {}
    }
}

impl Drop for Denormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        set_csr(self.saved);
    }
}

/// Sets this thread to flush denormals for good: the pool's workers, whose parts belong to
/// the calls of generated code. (A forward call's parts then flush where its caller's
/// would not, which changes only values below 1.2e-38.)
pub(crate) fn flush_for_good() {
    #[cfg(target_arch = "x86_64")]
    set_csr(csr() | FTZ_DAZ);
}

#[cfg(target_arch = "x86_64")]
fn csr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: `stmxcsr` stores the 32-bit MXCSR to the given address, a local.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
    v
}

#[cfg(target_arch = "x86_64")]
fn set_csr(v: u32) {
    // SAFETY: `ldmxcsr` loads MXCSR from a local; only the rounding-unrelated FTZ and DAZ
    // bits differ from the value read.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags)) };
}
