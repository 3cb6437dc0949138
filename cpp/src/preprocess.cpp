#include "facelab/preprocess.h"

#include <stdexcept>

#include <opencv2/imgproc.hpp>

namespace facelab {

Tensor imageTensor(const ModelInfo& info, const cv::Mat& bgr) {
  const auto& s = info.input_shape;
  Tensor t;
  t.shape = {1, 3, s[2], s[3]};
  t.data.resize(t.numel());
  imageToCHW(bgr, static_cast<int>(s[2]), static_cast<int>(s[3]), info.pre, t.data.data());
  return t;
}

void imageToCHW(const cv::Mat& bgr, int h, int w, const Preprocess& p, float* dst) {
  if (bgr.empty()) throw std::invalid_argument("empty image");
  if (bgr.type() != CV_8UC3) throw std::invalid_argument("image must be 8-bit, 3 channels (BGR)");
  cv::Mat img = bgr;
  if (img.rows != h || img.cols != w) {
    int interp = (img.rows > h && img.cols > w) ? cv::INTER_AREA : cv::INTER_LINEAR;
    cv::resize(bgr, img, cv::Size(w, h), 0, 0, interp);
  }
  const bool rgb = p.color_order == "RGB";
  // model channel c reads BGR channel src[c]
  const int src[3] = {rgb ? 2 : 0, 1, rgb ? 0 : 2};
  const size_t plane = static_cast<size_t>(h) * w;
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = img.ptr<uint8_t>(y);
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = static_cast<float>(row[3 * x + src[c]]) / 255.f;
        float d = v - p.mean[c];
        dst[c * plane + static_cast<size_t>(y) * w + x] = d / p.std[c];
      }
  }
}

cv::Mat cropBox(const cv::Mat& frame, const cv::Rect& box) {
  cv::Rect r = box & cv::Rect(0, 0, frame.cols, frame.rows);
  if (r.area() <= 0) throw std::invalid_argument("face box lies outside the frame");
  return frame(r);
}

}  // namespace facelab
