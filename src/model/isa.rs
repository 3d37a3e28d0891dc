//! The one run-time dispatch point of the hand-written CPU kernels (int8 and depthwise
//! convolution). Each kernel has a portable reference and an AVX2 path that tests
//! compare against it; the path is chosen once per process from the CPU, or forced with
//! `HISTOMAP_KERNEL=portable|avx2` so that tests cover every path on any machine that
//! can run it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
}

impl Isa {
    /// The fastest path this CPU runs, unless the environment forces one.
    pub fn detect() -> Isa {
        match std::env::var("HISTOMAP_KERNEL").as_deref() {
            Ok("portable") => Isa::Portable,
            _ if Isa::Avx2.available() => Isa::Avx2,
            _ => Isa::Portable,
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
        }
    }
}
