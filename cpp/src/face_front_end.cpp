#include "facelab/face_front_end.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/image_transforms.h>
#include <dlib/opencv/cv_image.h>
#include <nlohmann/json.hpp>
#include <opencv2/calib3d.hpp>
#include <opencv2/imgproc.hpp>

namespace fs = std::filesystem;
using nlohmann::json;

namespace facelab {

namespace {
const char* kPredictor = "shape_predictor_68_face_landmarks.dat";
const char* kDebianDir = "/usr/share/dlib";
int roundEven(double v) { return static_cast<int>(std::nearbyint(v)); }   // Python's round() (ties to even)
}  // namespace

FaceTemplate FaceTemplate::resized(int out_size) const {
  if (out_size <= 0 || out_size == outSize()) return *this;
  FaceTemplate t = *this;
  double k = static_cast<double>(out_size) / outSize();
  t.size = roundEven(size * k);
  t.crop = crop ? roundEven(crop * k) : 0;
  return t;
}

const FaceTemplate& FaceTemplates::get(const std::string& name_or_task) const {
  std::string name = tasks.count(name_or_task) ? tasks.at(name_or_task) : name_or_task;
  auto it = templates.find(name);
  if (it == templates.end()) {
    std::string known;
    for (auto& [k, v] : templates) known += (known.empty() ? "" : ", ") + k;
    for (auto& [k, v] : tasks) known += ", " + k + " (task)";
    throw std::invalid_argument("unknown alignment template '" + name_or_task + "'; known: " + known);
  }
  return it->second;
}

FaceTemplates loadFaceTemplates(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot read the face templates (write them with: python cpp/tools/face_templates.py " + path + ")");
  json j;
  try {
    in >> j;
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
  }
  FaceTemplates out;
  try {
    for (auto& [name, v] : j.at("templates").items()) {
      FaceTemplate t;
      t.name = name;
      t.size = v.at("size").get<int>();
      t.mode = v.at("mode").get<std::string>();
      t.margin = v.value("margin", 0.0);
      t.crop = v.value("crop", 0);
      t.grey = v.value("grey", false);
      for (auto& p : v.at("points")) t.points.emplace_back(p.at(0).get<float>(), p.at(1).get<float>());
      if (t.points.size() != 5) throw std::runtime_error("templates." + name + ".points: need 5 points");
      if (t.mode != "similarity" && t.mode != "box" && t.mode != "square")
        throw std::runtime_error("templates." + name + ".mode: must be similarity, box or square");
      if (t.size < 8) throw std::runtime_error("templates." + name + ".size: must be >= 8");
      out.templates[name] = t;
    }
    const json tasks = j.value("tasks", json::object());
    for (auto& [task, name] : tasks.items()) out.tasks[task] = name.get<std::string>();
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  if (out.templates.empty()) throw std::runtime_error(path + ": no templates");
  return out;
}

std::vector<cv::Point2f> fivePoints(const std::vector<cv::Point2f>& lm) {
  if (lm.size() != 68) throw std::invalid_argument("expected 68 landmarks, got " + std::to_string(lm.size()));
  auto mean = [&](int a, int b) {
    float x = 0, y = 0;
    for (int i = a; i < b; ++i) { x += lm[i].x; y += lm[i].y; }
    return cv::Point2f(x / (b - a), y / (b - a));
  };
  return {mean(36, 42), mean(42, 48), lm[30], lm[48], lm[54]};
}

std::string findShapePredictor(const std::string& configured) {
  std::vector<std::string> tried;
  if (!configured.empty()) {
    if (fs::is_regular_file(configured)) return configured;   // an explicit path is never replaced by another
    throw std::runtime_error("dlib shape predictor not found: the config's face.shape_predictor is " + configured +
                             " (without it: $FACELAB_FACE_MODELS, then /usr/share/dlib/" + kPredictor + ")");
  }
  if (const char* env = std::getenv("FACELAB_FACE_MODELS"); env && *env) {
    fs::path p(env);
    if (!(fs::is_regular_file(p) && p.filename() == kPredictor)) p /= kPredictor;
    if (fs::is_regular_file(p)) return p.string();
    tried.push_back("$FACELAB_FACE_MODELS (" + p.string() + ")");
  }
  fs::path d = fs::path(kDebianDir) / kPredictor;
  if (fs::is_regular_file(d)) return d.string();
  tried.push_back("Debian libdlib-data (" + d.string() + ")");
  std::string msg = std::string("dlib model ") + kPredictor + " not found; looked in: ";
  for (size_t i = 0; i < tried.size(); ++i) msg += (i ? "; " : "") + tried[i];
  throw std::runtime_error(msg + ". Install Debian's libdlib-data, set face.shape_predictor in the config, or set "
                                 "FACELAB_FACE_MODELS to a folder holding " + kPredictor);
}

struct FaceFrontEnd::Impl {
  dlib::frontal_face_detector det = dlib::get_frontal_face_detector();
  dlib::shape_predictor sp;
};

FaceFrontEnd::FaceFrontEnd(const FaceConfig& cfg) : cfg_(cfg), impl_(std::make_unique<Impl>()) {
  if (cfg_.templates.empty()) throw std::runtime_error("face front end: no templates file (face.templates in the config)");
  templates_ = loadFaceTemplates(cfg_.templates);
  templates_.get(cfg_.template_name);   // fail early on an unknown template
  sp_path_ = findShapePredictor(cfg_.shape_predictor);
  try {
    dlib::deserialize(sp_path_) >> impl_->sp;
  } catch (const std::exception& e) {
    throw std::runtime_error(sp_path_ + ": not a dlib shape predictor (" + e.what() + ")");
  }
  if (impl_->sp.num_parts() != 68)
    throw std::runtime_error(sp_path_ + ": has " + std::to_string(impl_->sp.num_parts()) + " parts, need 68");
}

FaceFrontEnd::~FaceFrontEnd() = default;

namespace {
cv::Mat toRgb(const cv::Mat& img) {
  if (img.depth() != CV_8U) throw std::invalid_argument("face detection needs an 8-bit image");
  cv::Mat rgb;
  if (img.channels() == 1) cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB);
  else if (img.channels() == 3) cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
  else if (img.channels() == 4) cv::cvtColor(img, rgb, cv::COLOR_BGRA2RGB);
  else throw std::invalid_argument("face detection needs a grey, BGR or BGRA image");
  return rgb;
}
}  // namespace

std::vector<Face> FaceFrontEnd::boxes(const cv::Mat& bgr) const {
  cv::Mat rgb = toRgb(bgr);
  double s = std::min(1.0, static_cast<double>(cfg_.max_side) / std::max(rgb.rows, rgb.cols));
  cv::Mat small = rgb;
  if (s < 1) cv::resize(rgb, small, cv::Size(), s, s, cv::INTER_AREA);
  int up = cfg_.upsample >= 0 ? cfg_.upsample : static_cast<int>(std::min(small.rows, small.cols) < 400);
  std::vector<dlib::rect_detection> dets;
  dlib::cv_image<dlib::rgb_pixel> view(small);
  dlib::pyramid_down<2> pyr;
  if (up == 0) {
    impl_->det(view, dets, cfg_.min_score);
  } else {   // as dlib's Python binding (run_detector_with_upscale2)
    dlib::array2d<dlib::rgb_pixel> tmp;
    dlib::pyramid_up(view, tmp, pyr);
    for (int l = 1; l < up; ++l) dlib::pyramid_up(tmp);
    impl_->det(tmp, dets, cfg_.min_score);
    for (auto& d : dets) d.rect = pyr.rect_down(d.rect, static_cast<unsigned>(up));
  }
  std::vector<Face> out;
  for (auto& d : dets) {
    Face f;
    double x0 = d.rect.left() / s, y0 = d.rect.top() / s, x1 = d.rect.right() / s, y1 = d.rect.bottom() / s;
    f.box = cv::Rect2d(x0, y0, x1 - x0, y1 - y0);
    f.score = d.detection_confidence;
    out.push_back(f);
  }
  std::stable_sort(out.begin(), out.end(), [](const Face& a, const Face& b) { return a.box.area() > b.box.area(); });
  return out;
}

std::vector<cv::Point2f> FaceFrontEnd::landmarks(const cv::Mat& bgr, const cv::Rect2d& box) const {
  cv::Mat rgb = toRgb(bgr);
  dlib::rectangle r(roundEven(box.x), roundEven(box.y), roundEven(box.x + box.width), roundEven(box.y + box.height));
  dlib::full_object_detection sh = impl_->sp(dlib::cv_image<dlib::rgb_pixel>(rgb), r);
  std::vector<cv::Point2f> pts;
  for (unsigned long i = 0; i < sh.num_parts(); ++i)
    pts.emplace_back(static_cast<float>(sh.part(i).x()), static_cast<float>(sh.part(i).y()));
  return pts;
}

std::vector<Face> FaceFrontEnd::detect(const cv::Mat& bgr) const {
  auto faces = boxes(bgr);
  for (auto& f : faces) f.landmarks = landmarks(bgr, f.box);
  return faces;
}

namespace {
cv::Mat squareMatrix(const std::vector<cv::Point2d>& pts, int size, double margin) {
  double lx = 1e300, ly = 1e300, hx = -1e300, hy = -1e300;
  for (auto& p : pts) { lx = std::min(lx, p.x); ly = std::min(ly, p.y); hx = std::max(hx, p.x); hy = std::max(hy, p.y); }
  double cx = (lx + hx) / 2, cy = (ly + hy) / 2, side = std::max(hx - lx, hy - ly) * (1 + 2 * margin);
  double s = size / std::max(side, 1e-6);
  return (cv::Mat_<double>(2, 3) << s, 0, size / 2.0 - s * cx, 0, s, size / 2.0 - s * cy);
}
}  // namespace

cv::Mat FaceFrontEnd::alignMatrix(const Face& face, const FaceTemplate& t) const {
  if (face.landmarks.empty()) {
    std::vector<cv::Point2d> b = {{face.box.x, face.box.y}, {face.box.x + face.box.width, face.box.y + face.box.height}};
    return squareMatrix(b, t.size, t.mode == "square" ? t.margin : 0.25);
  }
  if (t.mode == "square") {
    std::vector<cv::Point2d> p(face.landmarks.begin(), face.landmarks.end());
    return squareMatrix(p, t.size, t.margin);
  }
  std::vector<cv::Point2f> src = fivePoints(face.landmarks), dst;
  for (auto& p : t.points) dst.emplace_back(p.x * static_cast<float>(t.size), p.y * static_cast<float>(t.size));
  if (t.mode == "box") {   // least-squares scale + shift
    double scx = 0, scy = 0, dcx = 0, dcy = 0;
    for (size_t i = 0; i < 5; ++i) { scx += src[i].x; scy += src[i].y; dcx += dst[i].x; dcy += dst[i].y; }
    scx /= 5; scy /= 5; dcx /= 5; dcy /= 5;
    double num = 0, den = 0;
    for (size_t i = 0; i < 5; ++i) {
      double ax = src[i].x - scx, ay = src[i].y - scy;
      num += ax * (dst[i].x - dcx) + ay * (dst[i].y - dcy);
      den += ax * ax + ay * ay;
    }
    double s = num / std::max(den, 1e-9);
    return (cv::Mat_<double>(2, 3) << s, 0, dcx - s * scx, 0, s, dcy - s * scy);
  }
  cv::Mat M = cv::estimateAffinePartial2D(src, dst, cv::noArray(), cv::LMEDS);
  if (M.empty()) throw std::runtime_error("alignment failed: degenerate landmarks");
  return M;
}

cv::Mat FaceFrontEnd::align(const cv::Mat& bgr, const Face& face, const FaceTemplate& t) const {
  cv::Mat out;
  cv::warpAffine(bgr, out, alignMatrix(face, t), cv::Size(t.size, t.size), cv::INTER_LINEAR, cv::BORDER_REPLICATE);
  if (t.crop) {
    int o = (t.size - t.crop) / 2;
    out = out(cv::Rect(o, o, t.crop, t.crop)).clone();
  }
  if (t.grey && out.channels() == 3) cv::cvtColor(out, out, cv::COLOR_BGR2GRAY);
  return out;
}

std::vector<cv::Point2f> transformPoints(const std::vector<cv::Point2f>& pts, const cv::Mat& M) {
  std::vector<cv::Point2f> out;
  for (auto& p : pts)
    out.emplace_back(static_cast<float>(M.at<double>(0, 0) * p.x + M.at<double>(0, 1) * p.y + M.at<double>(0, 2)),
                     static_cast<float>(M.at<double>(1, 0) * p.x + M.at<double>(1, 1) * p.y + M.at<double>(1, 2)));
  return out;
}

}  // namespace facelab
