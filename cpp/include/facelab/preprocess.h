// Image preprocessing as facelab.predict does it from the model metadata.
#pragma once
#include <opencv2/core.hpp>

#include "facelab/engine_base.h"

namespace facelab {

// A BGR uint8 image (OpenCV's order) -> normalised float32 CHW at (h, w), written to dst (3*h*w floats):
// x = (v / 255 - mean[c]) / std[c] in float32 with channel c in the model's colour order, exactly as
// facelab.export._normalise. An image of another size is resized first (INTER_AREA when shrinking, INTER_LINEAR when
// enlarging; Python resizes with PIL's bilinear filter, so only same-size inputs are bit-identical).
void imageToCHW(const cv::Mat& bgr, int h, int w, const Preprocess& p, float* dst);

// The [1, 3, H, W] input tensor of an image model (H, W from its input shape), filled by imageToCHW.
Tensor imageTensor(const ModelInfo& info, const cv::Mat& bgr);

// The crop of `box` from `frame`, clipped to the frame; throws std::invalid_argument when nothing is left.
cv::Mat cropBox(const cv::Mat& frame, const cv::Rect& box);

}  // namespace facelab
