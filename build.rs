//! Links OpenSlide 4 where scripts/fetch-openslide.sh has put it (vendor/openslide/lib):
//! the linker finds it before the system's 3.4.1, and its folder goes into the
//! binaries' run path, so they load it with no LD_LIBRARY_PATH. Without it, the
//! system's OpenSlide is linked as openslide-sys finds it.

fn main() {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/openslide/lib");
    println!(
        "cargo:rerun-if-changed={}",
        lib.join("libopenslide.so.1").display()
    );
    if lib.join("libopenslide.so.1").is_file() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
