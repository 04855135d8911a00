//! With the `cuda` feature, builds the packed encoder's kernels
//! (src/backends/embedding/packed.cu) to PTX with nvcc, for the compute capability in
//! CUDA_COMPUTE_CAP (as candle's kernels; default 80). PTX runs on that
//! capability and every later one (the driver compiles it on first use).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/backends/embedding/packed.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "nvcc".into());
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("packed.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg("src/backends/embedding/packed.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) building src/backends/embedding/packed.cu", nvcc.display()),
        Err(e) => panic!(
            "cannot run {}: {e} (the cuda feature needs the CUDA toolkit: eval \"$(scripts/cuda-toolkit.sh)\")",
            nvcc.display()
        ),
    }
}
