//! The one run-time dispatch point of the hand-written CPU kernels (int8 and depthwise
//! convolution). Each kernel has a portable reference and vector paths that tests
//! compare against it bit for bit; the path is chosen once per process from the CPU, or
//! forced with `HISTOMAP_KERNEL=portable|avx2|avx512vnni` so that tests cover every path
//! on any machine that can run it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    /// AVX2, with AVX-512 VNNI's dot-product instructions on 256-bit vectors for the
    /// int8 products (`vpdpbusd`, `vpdpwssd`: one instruction where AVX2 takes two or
    /// three). Kernels without such a product run their AVX2 path.
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
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
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
