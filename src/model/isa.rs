//! The one run-time dispatch point of the hand-written CPU kernels (int8 and depthwise
//! convolution). Each kernel has a portable reference and vector paths that tests
//! compare against it bit for bit; the path is chosen once per process from the CPU, or
//! forced with `HISTOMAP_KERNEL=portable|avx2|avx512vnni` so that tests cover every path
//! on any machine that can run it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    /// AVX2, and AVX-512 VNNI's `vpdpbusd` on 512-bit vectors in the int8 matrix
    /// product (one instruction for 16 channels where AVX2 takes three for 8). Kernels
    /// without an AVX-512 path run their AVX2 one.
    Avx512Vnni,
}

impl Isa {
    /// Every path, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni];

    /// The fastest path this CPU runs, unless the environment forces one (a forced path
    /// the CPU cannot run falls back to the fastest it can).
    pub fn detect() -> Isa {
        let forced = std::env::var("HISTOMAP_KERNEL").ok();
        let fastest = Isa::ALL.into_iter().rev().find(|i| i.available());
        Isa::ALL
            .into_iter()
            .find(|i| Some(i.name()) == forced.as_deref() && i.available())
            .or(fastest)
            .unwrap_or(Isa::Portable)
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Whether kernels may take their AVX2 path: this path includes AVX2 and the CPU
    /// runs it.
    pub fn avx2(self) -> bool {
        self != Isa::Portable && self.available()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}
