//! build.rs links the crate's binaries so that they find libtorch without LD_LIBRARY_PATH and
//! keep libtorch's CUDA library, which `tch::Cuda::is_available()` needs on a GPU machine.

#[cfg(target_os = "linux")]
#[test]
fn libtorch_and_its_cuda_library_are_loaded() {
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("libtorch"))
        .collect();
    let cpu = libs
        .iter()
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .expect("libtorch_cpu.so is loaded");
    let dir = std::path::Path::new(cpu).parent().unwrap();
    assert!(
        libs.iter().any(|p| p.ends_with("/libtorch.so")),
        "libtorch.so was dropped by --as-needed: {libs:?}"
    );
    if dir.join("libtorch_cuda.so").exists() {
        assert!(
            libs.iter().any(|p| p.ends_with("/libtorch_cuda.so")),
            "libtorch_cuda.so exists in {} but is not loaded: {libs:?}",
            dir.display()
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_is_available_on_a_gpu_machine() {
    assert!(tch::Cuda::is_available());
}
