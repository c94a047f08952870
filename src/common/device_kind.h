// The device a process computes on, as train.device and `generate --device` name it. In
// common/ because both the config (src/config) and the runtime (src/parallel) use it.
#pragma once

namespace sy {

enum class DeviceKind { kCpu, kCuda, kAuto };  // kAuto: CUDA where there is one, else the CPU

}  // namespace sy
