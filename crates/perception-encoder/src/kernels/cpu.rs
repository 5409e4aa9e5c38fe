//! What this CPU (and OS) offer the kernels, asked once per process: the vector unit for the
//! element-wise and float32 kernels, the AVX-512 extensions (BF16, VNNI) and AMX with Linux's
//! permission to use its tile state. `PE_SIMD` below `avx512` stands for an older CPU, so it
//! hides the AVX-512 extensions and AMX too.

/// The widest vector unit this CPU has, asked once. The crate is built for baseline x86-64
/// (SSE2), so the element-wise loops (`math`) are compiled again inside
/// `target_feature` wrappers and picked at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

/// The vector unit the element-wise kernels use: the widest this CPU has, unless `PE_SIMD`
/// (`avx512`, `avx2`, `baseline`) names a narrower one, so that the code paths of older CPUs
/// can be run, and tested, on a newer one. Asked once per process.
pub(crate) fn simd() -> Simd {
    static S: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let (avx512, avx2) = {
            let fma = is_x86_feature_detected!("fma");
            (is_x86_feature_detected!("avx512f") && fma, is_x86_feature_detected!("avx2") && fma)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (avx512, avx2) = (false, false);
        super::choose(
            "PE_SIMD",
            &[("avx512", Simd::Avx512, avx512), ("avx2", Simd::Avx2, avx2), ("baseline", Simd::Baseline, true)],
        )
    })
}

/// CPUID leaf 7 (sub-leaf 0) EDX, or 0 where the CPU has no leaf 7.
#[cfg(target_arch = "x86_64")]
fn leaf7_edx() -> u32 {
    static EDX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EDX.get_or_init(|| {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return 0;
        }
        std::arch::x86_64::__cpuid_count(7, 0).edx
    })
}

/// AVX2 and FMA, in use (also where AVX-512 is).
pub(crate) fn avx2() -> bool {
    matches!(simd(), Simd::Avx512 | Simd::Avx2)
}

/// AMD Zen and Zen+ (family 0x17 below model 0x30): 256-bit instructions run as two 128-bit
/// halves, so integer work beside the FMAs takes their pipes' slots (Zen 2 has full-width units).
pub(crate) fn halves_256() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        let amd = [v.ebx, v.edx, v.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]; // "AuthenticAMD"
        let eax = __cpuid(1).eax;
        let family = ((eax >> 8) & 0xf) + if (eax >> 8) & 0xf == 0xf { (eax >> 20) & 0xff } else { 0 };
        let model = ((eax >> 4) & 0xf) | ((eax >> 12) & 0xf0);
        amd && family == 0x17 && model < 0x30
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX512-BF16 (`vdpbf16ps`), with AVX-512 in use.
pub(crate) fn avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd() == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX512-VNNI (`vpdpbusd`), with AVX-512 in use.
pub(crate) fn avx512vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd() == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMX-TILE and AMX-BF16 (EDX bits 24 and 22), permitted, with AVX512-BF16 for the epilogues.
pub(crate) fn amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let edx = leaf7_edx();
        edx & (1 << 24) != 0 && edx & (1 << 22) != 0 && amx_permitted() && avx512bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMX-TILE and AMX-INT8 (EDX bits 24 and 25), permitted, with AVX-512 for the epilogues.
pub(crate) fn amx_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let edx = leaf7_edx();
        edx & (1 << 24) != 0 && edx & (1 << 25) != 0 && amx_permitted() && simd() == Simd::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
/// Linux lets this process use the AMX tile data (asked once; `arch_prctl` fails cleanly where
/// AMX is unsupported).
fn amx_permitted() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with these arguments only changes which extended states this
            // process may use.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            false
        }
    })
}
