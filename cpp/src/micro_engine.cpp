#include "facelab/micro_engine.h"

#include "facelab/preprocess.h"

namespace facelab {

void MicroEngine::validate(const ModelInfo& info) const {
  const auto& s = info.input_shape;
  if (s.size() != 5 || s[1] <= 0 || s[2] != 3 || s[3] <= 0 || s[4] <= 0)
    throw ModelError(info.path + ": micro input '" + info.input_name + "' must be [batch, T, 3, H, W]");
  if (s[0] != -1 && s[0] != 1) throw ModelError(info.path + ": batch axis must be dynamic or 1");
  if (info.output_names != std::vector<std::string>{"logits"})
    throw ModelError(info.path + ": micro models have one output 'logits'");
  if (info.class_names.size() < 2) throw ModelError(info.path + ": micro models need >= 2 class_names");
}

void MicroEngine::validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const {
  validateOutput2D(info, y[0], "logits", info.class_names.size());
}

void MicroEngine::reset() {
  std::lock_guard<std::mutex> g(mu_);
  buf_.reset();
}

void MicroEngine::setStride(size_t stride) {
  std::lock_guard<std::mutex> g(mu_);
  if (stride == 0) throw std::invalid_argument("micro stride must be >= 1");
  stride_ = stride;
  buf_.setStride(stride);
}

size_t MicroEngine::stride() const {
  std::lock_guard<std::mutex> g(mu_);
  return stride_;
}

MicroResult MicroEngine::predictClip(const Tensor& clip) const {
  auto m = require();
  auto out = run(*m, clip);
  validateOutputs(m->info, out);
  MicroResult r;
  static_cast<ClassResult&>(r) = classResult(out[0], m->info.class_names);
  return r;
}

std::optional<MicroResult> MicroEngine::push(const cv::Mat& bgr, const std::string& track) {
  auto m = require();
  const auto& s = m->info.input_shape;
  const size_t T = static_cast<size_t>(s[1]), H = static_cast<size_t>(s[3]), W = static_cast<size_t>(s[4]);
  std::lock_guard<std::mutex> g(mu_);
  if (buf_generation_ != m->generation) {   // first model, or a reload: the frames in the buffer may not fit
    if (buf_.length() != T || buf_.frameSize() != 3 * H * W) buf_.configure(T, 3 * H * W);
    buf_.setStride(stride_);
    buf_generation_ = m->generation;
  }
  if (track != track_) {
    buf_.reset();
    track_ = track;
  }
  frame_.resize(3 * H * W);
  imageToCHW(bgr, static_cast<int>(H), static_cast<int>(W), m->info.pre, frame_.data());
  if (!buf_.push(frame_.data())) return std::nullopt;
  Tensor clip;
  clip.shape = {1, static_cast<int64_t>(T), 3, static_cast<int64_t>(H), static_cast<int64_t>(W)};
  clip.data.resize(clip.numel());
  buf_.window(clip.data.data());
  auto out = run(*m, clip);
  validateOutputs(m->info, out);
  MicroResult r;
  static_cast<ClassResult&>(r) = classResult(out[0], m->info.class_names);
  r.last_frame = buf_.pushed() - 1;
  return r;
}

}  // namespace facelab
