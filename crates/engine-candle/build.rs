//! Names the CPU level the SIMD kernels are compiled for once:
//! `cfg(x86_v3)` where the target enables AVX2, FMA and F16C (x86-64-v3,
//! .cargo/config.toml), instead of the four-part `cfg(all(...))` at every
//! kernel.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(x86_v3)");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    if x86_64 && has("avx2") && has("fma") && has("f16c") {
        println!("cargo::rustc-cfg=x86_v3");
    }
}
