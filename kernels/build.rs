//! With the `cuda` feature, compiles the CUDA kernels to PTX (loaded at run time through candle's
//! CudaDevice). nvcc is `$NVCC`, else `nvcc` on PATH; the target is `sm_$CUDA_COMPUTE_CAP` (e.g.
//! 90 for an H100), else the first GPU's compute capability as nvidia-smi reports it. These are
//! the variables candle's own kernels build with, so both target the same GPU.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources, each compiled to `$OUT_DIR/<stem>.ptx`.
const KERNELS: [&str; 1] = ["src/group_norm/group_norm.cu"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["NVCC", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let compute_cap = compute_cap();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for source in KERNELS {
        println!("cargo::rerun-if-changed={source}");
        compile_ptx(&nvcc, &compute_cap, Path::new(source), &out_dir);
    }
}

/// `CUDA_COMPUTE_CAP` ("90", "8.9" or "sm_90"), else nvidia-smi's answer, as digits only.
fn compute_cap() -> String {
    let raw = match env::var("CUDA_COMPUTE_CAP") {
        Ok(cap) => cap,
        Err(_) => {
            let query = Command::new("nvidia-smi")
                .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
                .output();
            match query {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                _ => panic!(
                    "the cuda feature needs the GPU's compute capability: set CUDA_COMPUTE_CAP \
                     (e.g. 90 for an H100, 89 for an L4/RTX 4090, 80 for an A100) or make \
                     nvidia-smi available"
                ),
            }
        }
    };
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 2 {
        panic!("CUDA_COMPUTE_CAP must look like 90 or 8.9, got {raw:?}");
    }
    digits
}

fn compile_ptx(nvcc: &str, compute_cap: &str, source: &Path, out_dir: &Path) {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("kernel sources have UTF-8 names");
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let status = Command::new(nvcc)
        .arg("--ptx")
        .arg(format!("--gpu-architecture=sm_{compute_cap}"))
        .args(["-O3", "-std=c++17", "-o"])
        .arg(&ptx)
        .arg(source)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run nvcc ({nvcc}): {e}; install the CUDA toolkit or set NVCC")
        });
    if !status.success() {
        panic!("nvcc failed on {} ({status})", source.display());
    }
}
