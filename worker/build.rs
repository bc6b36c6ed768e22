//! Link options of the `sluice-worker` binary.
//!
//! With `SLUICE_PACK_RELOCS=1` the binary is linked with `-z pack-relative-relocs` (DT_RELR): its
//! ~7 MB table of relative relocations shrinks to ~0.1 MB, which the dynamic loader otherwise
//! reads in full at every start (resident memory and start-up time). The result needs glibc 2.36
//! or newer at run time, hence opt-in: the container image (Debian 12) and `bench/run.sh` (after
//! checking the local glibc) set it. Measurements: docs/bench.md, "Idle memory".

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_PACK_RELOCS");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("SLUICE_PACK_RELOCS").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
