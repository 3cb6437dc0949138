// The canonical weight hash of an ONNX model (facelab.integrity.onnx_weights_sha256, metadata key weights_sha256),
// recomputed in C++ from the file with a small protobuf wire-format reader.
#pragma once
#include <string>

namespace facelab {

inline constexpr const char* kWeightsSha256Key = "weights_sha256";

// sha256 over the main graph's initialisers and Constant nodes' `value` tensors, sorted by name: for each, the name,
// data_type, dims and element bytes (little-endian), exactly as the Python definition (nbs/40_export_integrity.ipynb).
// Throws std::runtime_error naming `path` for what it cannot read: external data, 4-bit and complex types.
std::string onnxWeightsSha256(const std::string& path);

}  // namespace facelab
