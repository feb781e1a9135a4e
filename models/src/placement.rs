//! Where a model version runs. The format decides which devices are possible: only Candle
//! (`format: safetensors`) has GPU code paths, so an ONNX or tree model runs on the CPU whatever it
//! asks for; a Candle model gets what `Devices::place` decides for its request.

use ferry_registry::ModelFormat;
use ferry_runtimes::device::DeviceError;
use ferry_runtimes::{Device, DeviceRequest, Devices, Placement};

/// The device a version of `format` runs on when its settings ask for `requested` (`strict`:
/// `device_strict`). A fallback to the CPU comes back with its reason (the caller warns);
/// an unusable `cuda:N` with `strict` is an error, except for ONNX, which never uses it.
pub fn place(
    devices: &Devices,
    format: ModelFormat,
    requested: DeviceRequest,
    strict: bool,
) -> Result<Placement, DeviceError> {
    match format {
        ModelFormat::Onnx | ModelFormat::Xgboost | ModelFormat::Lightgbm
            if requested != DeviceRequest::Auto =>
        {
            Ok(Placement {
                device: Device::Cpu,
                fallback: (requested != DeviceRequest::Cpu).then(|| {
                    format!(
                        "{requested} is not available: ONNX and tree models run on the CPU in this build"
                    )
                }),
            })
        }
        ModelFormat::Onnx | ModelFormat::Xgboost | ModelFormat::Lightgbm => Ok(Placement::cpu()),
        ModelFormat::Safetensors => devices.place(requested, strict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_runtimes::device::{CpuInfo, CudaDevice};

    fn machine(gpus: &[usize], cuda_compiled: bool) -> Devices {
        Devices {
            cpu: CpuInfo::new(4, None),
            cuda: gpus
                .iter()
                .map(|&index| CudaDevice { index, name: None })
                .collect(),
            cuda_compiled,
        }
    }

    #[test]
    fn onnx_runs_on_the_cpu_even_with_a_usable_gpu() {
        let gpu = machine(&[0], true);
        for strict in [false, true] {
            let p = place(&gpu, ModelFormat::Onnx, DeviceRequest::Cuda(0), strict).unwrap();
            assert_eq!(p.device, Device::Cpu);
            let reason = p
                .fallback
                .expect("asking for a GPU and not getting it is reported");
            assert!(
                reason.contains("cuda:0") && reason.contains("ONNX"),
                "{reason}"
            );
        }
        for request in [DeviceRequest::Auto, DeviceRequest::Cpu] {
            let p = place(&gpu, ModelFormat::Onnx, request, false).unwrap();
            assert_eq!((p.device, p.fallback), (Device::Cpu, None), "{request}");
        }
    }

    #[test]
    fn safetensors_get_a_usable_gpu_and_fall_back_only_when_not_strict() {
        let gpu = machine(&[0], true);
        let p = place(&gpu, ModelFormat::Safetensors, DeviceRequest::Auto, false).unwrap();
        assert_eq!((p.device, p.fallback), (Device::Cuda(0), None));
        let p = place(&gpu, ModelFormat::Safetensors, DeviceRequest::Cuda(0), true).unwrap();
        assert_eq!(p.device, Device::Cuda(0));

        let cpu_only = machine(&[], true);
        let p = place(
            &cpu_only,
            ModelFormat::Safetensors,
            DeviceRequest::Auto,
            false,
        )
        .unwrap();
        assert_eq!((p.device, p.fallback), (Device::Cpu, None));
        let p = place(
            &cpu_only,
            ModelFormat::Safetensors,
            DeviceRequest::Cuda(1),
            false,
        )
        .unwrap();
        assert_eq!(p.device, Device::Cpu);
        assert!(p.fallback.unwrap().contains("no CUDA device"));
        let e = place(
            &cpu_only,
            ModelFormat::Safetensors,
            DeviceRequest::Cuda(1),
            true,
        )
        .unwrap_err();
        assert_eq!(e.index, 1);

        let not_built = machine(&[0], false);
        let p = place(
            &not_built,
            ModelFormat::Safetensors,
            DeviceRequest::Auto,
            false,
        )
        .unwrap();
        assert_eq!(
            p.device,
            Device::Cpu,
            "a GPU this binary cannot drive is not used"
        );
    }
}
