// MacroEngine: a face crop (or a frame and a face box) -> 7 expression probabilities.
#pragma once
#include <opencv2/core.hpp>

#include "facelab/engine_base.h"

namespace facelab {

struct ClassResult {
  std::vector<float> logits, probs;   // probs = softmax(logits)
  size_t label = 0;
  std::string label_name;
  float confidence = 0;
};

ClassResult classResult(const Tensor& logits, const std::vector<std::string>& names);

class MacroEngine : public EngineBase {
 public:
  explicit MacroEngine(SessionConfig threads = {}) : EngineBase("macro", threads) {}
  // `bgr`: a face crop, 8-bit BGR (OpenCV's order); resized to the model's input size when it differs.
  ClassResult predict(const cv::Mat& bgr) const;
  ClassResult predict(const cv::Mat& frame, const cv::Rect& face_box) const;
  // The model's input tensor for `bgr` (1, 3, H, W), as the model's metadata says.
  Tensor preprocess(const cv::Mat& bgr) const;

 protected:
  void validate(const ModelInfo& info) const override;
};

// Shared by the image engines: rank 4, 3 channels, positive square-or-not size.
void validateImageInput(const ModelInfo& info);
// Output `name` of a warm-up must be [1, n].
void validateOutput2D(const ModelInfo& info, const Tensor& t, const std::string& name, size_t n);

}  // namespace facelab
