//! Denormal floats flushed to zero while a training step runs (x86-64's MXCSR FTZ and DAZ
//! bits, AArch64's FPCR FZ bit), as TensorFlow runs all its CPU threads (XLA's
//! `llvm_compiler.cc` says so where it turns them off for compiling).
//!
//! Training the tutorial to a loss of 0.0000 leaves Adam's second moments of many weights
//! denormal, and on the host of 2026-12-05 every square root and division that touched
//! one took a microcode assist: `lstmc run` spent 77% of its time in the updates and took
//! 10.1 s at one thread where its 2000 epochs of the same steps on random data take 4.5 s
//! (7.4 s at two threads). Flushed, 4.8 s (4.4 s). What changes is below 1.2e-38: a
//! moment that would be denormal is zero, and `√v + ε` is `ε` either way.

/// While alive, this thread flushes denormals; restores the previous mode when dropped.
pub(crate) struct Denormals {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    saved: mode::Word,
}

impl Denormals {
    /// Flushes denormals on this thread until the guard is dropped.
    pub(crate) fn flushed() -> Denormals {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let saved = mode::get();
            mode::set(saved | mode::FLUSH);
            Denormals { saved }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        Denormals {}
    }
}

impl Drop for Denormals {
    fn drop(&mut self) {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        mode::set(self.saved);
    }
}

/// Sets this thread to flush denormals for good: the pool's workers, whose parts belong to
/// the calls of generated code. (A forward call's parts then flush where its caller's
/// would not, which changes only values below 1.2e-38.)
pub(crate) fn flush_for_good() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    mode::set(mode::get() | mode::FLUSH);
}

/// x86-64: MXCSR, whose flush-to-zero (bit 15) and denormals-are-zero (bit 6) bits flush
/// results and inputs.
#[cfg(target_arch = "x86_64")]
mod mode {
    pub(super) type Word = u32;
    pub(super) const FLUSH: Word = (1 << 15) | (1 << 6);

    pub(super) fn get() -> Word {
        let mut v: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR to the given address, a local.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags))
        };
        v
    }

    pub(super) fn set(v: Word) {
        // SAFETY: `ldmxcsr` loads MXCSR from a local; only the rounding-unrelated FTZ and
        // DAZ bits differ from the value read.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags)) };
    }
}

/// AArch64: FPCR, whose flush-to-zero bit (24) flushes both denormal inputs and results
/// of single and double precision.
#[cfg(target_arch = "aarch64")]
mod mode {
    pub(super) type Word = u64;
    pub(super) const FLUSH: Word = 1 << 24;

    pub(super) fn get() -> Word {
        let v: u64;
        // SAFETY: reads FPCR into a register.
        unsafe {
            std::arch::asm!("mrs {}, fpcr", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    pub(super) fn set(v: Word) {
        // SAFETY: writes FPCR; only the FZ bit differs from the value read.
        unsafe {
            std::arch::asm!("msr fpcr, {}", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
}
