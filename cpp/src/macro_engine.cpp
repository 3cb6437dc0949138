#include "facelab/macro_engine.h"

#include "facelab/preprocess.h"

namespace facelab {

ClassResult classResult(const Tensor& logits, const std::vector<std::string>& names) {
  ClassResult r;
  r.logits = logits.data;
  r.probs = softmax(r.logits.data(), r.logits.size());
  r.label = argmax(r.probs);
  r.confidence = r.probs[r.label];
  r.label_name = r.label < names.size() ? names[r.label] : "class_" + std::to_string(r.label);
  return r;
}

void validateImageInput(const ModelInfo& info) {
  const auto& s = info.input_shape;
  if (s.size() != 4 || s[1] != 3 || s[2] <= 0 || s[3] <= 0)
    throw ModelError(info.path + ": " + info.task + " input '" + info.input_name +
                     "' must be [batch, 3, H, W] (an RGB image), the model has rank " + std::to_string(s.size()) +
                     (s.size() > 1 ? " with " + std::to_string(s[1]) + " channels" : ""));
  if (s[0] != -1 && s[0] != 1) throw ModelError(info.path + ": batch axis must be dynamic or 1");
}

void validateOutput2D(const ModelInfo& info, const Tensor& t, const std::string& name, size_t n) {
  if (t.shape.size() != 2 || t.shape[0] != 1 || static_cast<size_t>(t.shape[1]) != n)
    throw ModelError(info.path + ": output '" + name + "' must be [1, " + std::to_string(n) + "] for one input");
}

void MacroEngine::validate(const ModelInfo& info) const {
  validateImageInput(info);
  if (info.output_names != std::vector<std::string>{"logits"})
    throw ModelError(info.path + ": macro models have one output 'logits'");
  if (info.class_names.size() != 7)
    throw ModelError(info.path + ": macro models have 7 classes, the metadata lists " + std::to_string(info.class_names.size()));
}

Tensor MacroEngine::preprocess(const cv::Mat& bgr) const {
  return imageTensor(require()->info, bgr);
}

ClassResult MacroEngine::predict(const cv::Mat& bgr) const {
  auto m = require();   // one snapshot for preprocessing and inference
  auto out = run(*m, imageTensor(m->info, bgr));
  validateOutput2D(m->info, out[0], "logits", 7);
  return classResult(out[0], m->info.class_names);
}

ClassResult MacroEngine::predict(const cv::Mat& frame, const cv::Rect& face_box) const {
  return predict(cropBox(frame, face_box));
}

}  // namespace facelab
