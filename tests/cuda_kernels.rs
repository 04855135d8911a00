//! The packed encoder's CUDA kernels (src/backends/embedding/packed.cu), checked on
//! the CPU: the file compiles as C++ against tests/cuda/emulate.h (each
//! block's threads run as OS threads, `__syncthreads` is a barrier) and
//! tests/cuda/packed_test.cpp compares every kernel with a reference in
//! double precision. Needs a C++20 compiler (`c++`, or `CXX`); without
//! one this test fails, saying so. On a GPU, scripts/bench-gpu.sh checks
//! the kernels' vectors against sentence-transformers.

use std::path::Path;
use std::process::Command;

#[test]
fn packed_kernels_agree_with_references_when_emulated_on_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("packed_test");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-DSTOOK_EMULATE"])
        .arg("-I")
        .arg(root.join("tests/cuda"))
        .arg("-I")
        .arg(root.join("src/backends/embedding"))
        .arg(root.join("tests/cuda/packed_test.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C++ compiler {cxx:?}: {e} (install g++ 11 or later, or set CXX)")
        });
    assert!(
        built.status.success(),
        "{cxx} could not build tests/cuda/packed_test.cpp:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&ran.stdout);
    eprintln!("{report}");
    assert!(
        ran.status.success(),
        "a kernel disagrees with its reference:\n{report}"
    );
    assert!(report.contains("all kernels agree"), "{report}");
}
