#include "facelab/pipeline.h"

#include <chrono>

namespace facelab {

namespace {
template <class E>
void applyModel(const char* task, std::unique_ptr<E>& eng, const EngineConfig& c, const EngineConfig* old,
                std::vector<std::string>& errors) {
  auto it = c.models.find(task);
  if (it == c.models.end()) {
    eng.reset();
    return;
  }
  const ModelConfig& mc = it->second;
  bool fresh = !eng;
  if (fresh) eng = std::make_unique<E>(c.threads);
  bool threads_changed = old && !(old->threads == c.threads);
  const ModelConfig* prev = nullptr;
  if (old) {
    auto o = old->models.find(task);
    if (o != old->models.end()) prev = &o->second;
  }
  if (fresh || threads_changed || !prev || ModelConfig::needsReload(*prev, mc) || !eng->loaded()) {
    eng->setSessionConfig(c.threads);
    std::string err = eng->reloadModel(mc);
    if (!err.empty()) errors.push_back(std::string(task) + ": " + err);
  }
}
}  // namespace

std::vector<std::string> Pipeline::apply(const EngineConfig& c) {
  std::vector<std::string> errors;
  const EngineConfig* old = have_cfg_ ? &cfg_ : nullptr;
  applyModel("macro", macro_, c, old, errors);
  applyModel("micro", micro_, c, old, errors);
  applyModel("au", au_, c, old, errors);
  applyModel("spotting", spot_, c, old, errors);
  try {
    if (micro_) micro_->setStride(static_cast<size_t>(c.models.at("micro").stride));
    if (au_) au_->setThresholds(c.models.at("au").thresholds);
    if (spot_) spot_->setFps(c.models.at("spotting").fps);
  } catch (const std::exception& e) {
    errors.push_back(c.file + ": " + e.what());
  }
  flow_.setConfig(c.flow);
  cfg_ = c;
  have_cfg_ = true;
  return errors;
}

FrameResult Pipeline::process(const cv::Mat& bgr, const std::string& track, const std::vector<float>* features) {
  using clk = std::chrono::steady_clock;
  auto ms = [](clk::time_point a, clk::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  FrameResult r;
  r.frame = frame_++;
  auto t0 = clk::now(), t = t0;
  if (macro_ && macro_->loaded()) {
    r.macro = macro_->predict(bgr);
    auto u = clk::now(); r.latency_ms["macro"] = ms(t, u); t = u;
  }
  if (au_ && au_->loaded()) {
    r.au = au_->predict(bgr);
    auto u = clk::now(); r.latency_ms["au"] = ms(t, u); t = u;
  }
  if (micro_ && micro_->loaded()) {
    r.micro = micro_->push(bgr, track);
    auto u = clk::now(); r.latency_ms["micro"] = ms(t, u); t = u;
  }
  if (spot_ && spot_->loaded() && features) {
    r.spotting = spot_->push(*features);
    auto u = clk::now(); r.latency_ms["spotting"] = ms(t, u); t = u;
  }
  r.flow = flow_.push(bgr);
  r.flow_magnitude = flow_.lastMagnitude();
  auto u = clk::now();
  r.latency_ms["flow"] = ms(t, u);
  r.latency_ms["total"] = ms(t0, u);
  return r;
}

FrameResult Pipeline::finish() {
  FrameResult r;
  r.frame = frame_;
  if (spot_ && spot_->loaded()) r.spotting = spot_->flush();
  r.flow = flow_.flush();
  flow_.reset();
  frame_ = 0;
  return r;
}

}  // namespace facelab
