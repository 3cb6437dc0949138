// MicroEngine: frames of one face track -> micro-expression class probabilities over a 16-frame sliding window.
#pragma once
#include <mutex>
#include <optional>

#include <opencv2/core.hpp>

#include "facelab/frame_buffer.h"
#include "facelab/macro_engine.h"

namespace facelab {

struct MicroResult : ClassResult {
  size_t last_frame = 0;   // index (since the track started) of the newest frame in the window
};

// One MicroEngine serves one stream: push() is serialised by an internal mutex. The window length and frame size are
// the model's own ([1, T, 3, H, W]); a reload that changes them resets the buffer.
class MicroEngine : public EngineBase {
 public:
  explicit MicroEngine(SessionConfig threads = {}, size_t stride = 4) : EngineBase("micro", threads), stride_(stride) {}
  // Push a frame (8-bit BGR face crop) of track `track`; a different track than the previous push resets the buffer.
  // Returns the class probabilities when a window was due (buffer full, every `stride` frames).
  std::optional<MicroResult> push(const cv::Mat& bgr, const std::string& track = "");
  void reset();
  void setStride(size_t stride);
  size_t stride() const;
  // Run a ready-made clip tensor [1, T, 3, H, W].
  MicroResult predictClip(const Tensor& clip) const;

 protected:
  void validate(const ModelInfo& info) const override;
  void validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const override;

 private:
  mutable std::mutex mu_;
  FrameBuffer buf_{1, 1, 0};
  std::string track_;
  uint64_t buf_generation_ = 0;
  size_t stride_;
  std::vector<float> frame_;
};

}  // namespace facelab
