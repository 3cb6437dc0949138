// Shared by facelab_run and facelab_bench: frame sources, feature files, percentiles, JSON of results.
#pragma once
#include <algorithm>
#include <chrono>
#include <memory>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include "facelab/pipeline.h"
#ifdef FACELAB_HAVE_DLIB
#include "facelab/face_front_end.h"
#endif

namespace facelab::tools {

namespace fs = std::filesystem;
using nlohmann::json;

// Frames from a folder of images (sorted by name) or a video file.
class FrameSource {
 public:
  explicit FrameSource(const std::string& path) : path_(path) {
    if (fs::is_directory(path)) {
      for (auto& e : fs::directory_iterator(path)) {
        std::string ext = e.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp" || ext == ".webp") files_.push_back(e.path().string());
      }
      std::sort(files_.begin(), files_.end());
      if (files_.empty()) throw std::runtime_error("no images (.jpg .jpeg .png .bmp .webp) in folder " + path);
    } else if (fs::is_regular_file(path)) {
      cap_.open(path);
      if (!cap_.isOpened()) throw std::runtime_error(path + ": OpenCV cannot open this video");
    } else {
      throw std::runtime_error("no such frame folder or video: " + path);
    }
  }
  // Next frame (8-bit BGR); false at the end. `name` is the file, or "<video>#<index>".
  bool next(cv::Mat& frame, std::string& name) {
    if (!files_.empty() || cap_.isOpened() == false) {
      if (i_ >= files_.size()) return false;
      name = files_[i_++];
      frame = cv::imread(name, cv::IMREAD_COLOR);
      if (frame.empty()) throw std::runtime_error(name + ": not a readable image");
      return true;
    }
    if (!cap_.read(frame) || frame.empty()) return false;
    name = path_ + "#" + std::to_string(i_++);
    return true;
  }

 private:
  std::string path_;
  std::vector<std::string> files_;
  cv::VideoCapture cap_;
  size_t i_ = 0;
};

// Per-frame features: a CSV (one row per frame, a non-numeric first row is a header) or raw float32 (.bin) with
// `cols` columns.
inline std::vector<std::vector<float>> readFeatures(const std::string& path, size_t cols) {
  std::vector<std::vector<float>> rows;
  if (path.size() > 4 && path.substr(path.size() - 4) == ".bin") {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error(path + ": cannot read the features");
    size_t n = static_cast<size_t>(in.tellg()) / sizeof(float);
    if (cols == 0 || n % cols) throw std::runtime_error(path + ": " + std::to_string(n) + " floats is not a multiple of " + std::to_string(cols) + " features");
    in.seekg(0);
    std::vector<float> all(n);
    in.read(reinterpret_cast<char*>(all.data()), static_cast<std::streamsize>(n * sizeof(float)));
    for (size_t r = 0; r < n / cols; ++r) rows.emplace_back(all.begin() + r * cols, all.begin() + (r + 1) * cols);
    return rows;
  }
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot read the features");
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    std::vector<float> row;
    std::stringstream ss(line);
    std::string cell;
    bool numeric = true;
    while (std::getline(ss, cell, ',')) {
      try {
        size_t pos = 0;
        row.push_back(std::stof(cell, &pos));
      } catch (const std::exception&) {
        numeric = false;
        break;
      }
    }
    if (!numeric) {
      if (lineno == 1) continue;   // header
      throw std::runtime_error(path + ": row " + std::to_string(lineno) + " is not numeric");
    }
    if (row.size() != cols)
      throw std::runtime_error(path + ": row " + std::to_string(lineno) + " has " + std::to_string(row.size()) +
                               " columns, the spotting model wants " + std::to_string(cols));
    rows.push_back(std::move(row));
  }
  return rows;
}

inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

inline json pct(const std::vector<double>& v) {
  return {{"n", v.size()}, {"p50", percentile(v, 50)}, {"p90", percentile(v, 90)}, {"p99", percentile(v, 99)}};
}

inline json toJson(const ClassResult& r, const std::vector<std::string>& names) {
  json probs = json::object();
  for (size_t i = 0; i < r.probs.size(); ++i) probs[i < names.size() ? names[i] : "class_" + std::to_string(i)] = r.probs[i];
  return {{"label", r.label_name}, {"confidence", r.confidence}, {"probs", probs}};
}

inline json toJson(const std::vector<SpotInterval>& v) {
  json a = json::array();
  for (auto& i : v) a.push_back({{"kind", i.kind}, {"onset", i.onset}, {"offset", i.offset}, {"score", i.score}});
  return a;
}

inline json toJson(Pipeline& p, const FrameResult& r, const std::string& source) {
  json j = {{"frame", r.frame}, {"source", source}};
  if (r.macro) j["macro"] = toJson(*r.macro, p.macro()->snapshot()->info.class_names);
  if (r.micro) {
    j["micro"] = toJson(*r.micro, p.micro()->snapshot()->info.class_names);
    j["micro"]["last_frame"] = r.micro->last_frame;
  }
  if (r.au) {
    json a = json::object();
    for (auto& x : *r.au) a[x.au] = {{"present", x.present}, {"prob", x.probability}, {"intensity", x.intensity}};
    j["au"] = a;
  }
  if (p.spotting()) j["spotting"] = toJson(r.spotting);
  j["flow"] = {{"magnitude", r.flow_magnitude}, {"intervals", toJson(r.flow)}};
  j["latency_ms"] = r.latency_ms;
  return j;
}

// Raw frames -> aligned face crops when the config has a "face" section with detect true (FaceFrontEnd); otherwise
// every frame is already a crop. The detector runs every `every` frames (largest face); in between, the landmarks are
// re-fitted in the last box.
class FaceStage {
 public:
  explicit FaceStage(const EngineConfig& c) {
    if (!c.face.detect) return;
#ifdef FACELAB_HAVE_DLIB
    try {
      fe_ = std::make_unique<FaceFrontEnd>(c.face);
      tpl_ = fe_->templates().get(c.face.template_name);
    } catch (const std::exception& e) {
      throw std::runtime_error(c.file + ": face: " + e.what());
    }
    every_ = c.face.every;
#else
    throw std::runtime_error(c.file + ": face.detect needs the FaceFrontEnd, which this build does not have (dlib was not "
                             "found at build time: install Debian's libdlib-dev libdlib-data and rebuild)");
#endif
  }
  bool active() const { return static_cast<bool>(fe_); }
  // false: no face in this frame (info["face"] is null). ms: the front end's time.
  bool crop(const cv::Mat& frame, cv::Mat& out, json& info, double& ms) {
    if (!fe_) { out = frame; return true; }
#ifdef FACELAB_HAVE_DLIB
    auto t0 = std::chrono::steady_clock::now();
    bool detected = false;
    if (n_++ % every_ == 0 || !have_) {
      auto faces = fe_->boxes(frame);
      have_ = !faces.empty();
      if (have_) face_ = faces[0];
      detected = true;
    }
    if (have_) {
      face_.landmarks = fe_->landmarks(frame, face_.box);
      out = fe_->align(frame, face_, tpl_);
      if (out.channels() == 1) cv::cvtColor(out, out, cv::COLOR_GRAY2BGR);
      info["face"] = {{"box", {face_.box.x, face_.box.y, face_.box.x + face_.box.width, face_.box.y + face_.box.height}},
                      {"score", face_.score}, {"detected", detected}, {"template", tpl_.name}};
    } else {
      info["face"] = nullptr;
    }
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return have_;
#else
    (void)info; (void)ms;
    return false;
#endif
  }

 private:
#ifdef FACELAB_HAVE_DLIB
  std::unique_ptr<FaceFrontEnd> fe_;
  FaceTemplate tpl_;
  Face face_;
#else
  std::unique_ptr<int> fe_;
#endif
  int every_ = 1;
  long n_ = 0;
  bool have_ = false;
};

}  // namespace facelab::tools
