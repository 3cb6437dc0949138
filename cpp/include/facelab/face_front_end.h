// FaceFrontEnd: dlib's frontal (HOG) face detector and 68-point shape predictor, and the similarity alignment templates
// of facelab.face.align (read from a JSON file that Python writes: cpp/tools/face_templates.py), so the engines can run
// on raw frames. Matches facelab.face.FaceDetector('hog') + facelab.face.align.align_face to <= 1 px in landmarks.
#pragma once
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "facelab/config.h"

namespace facelab {

// One alignment template (facelab.face.align.AlignTemplate); points are FaceSynth's five unit-coordinate points.
struct FaceTemplate {
  std::string name;
  int size = 224;                 // aligned side in px
  std::string mode = "similarity";  // similarity | box | square
  double margin = 0;              // square only
  int crop = 0;                   // >0: keep the centre crop px
  bool grey = false;
  std::vector<cv::Point2f> points;  // 5 unit-coordinate points
  int outSize() const { return crop ? crop : size; }
  FaceTemplate resized(int out_size) const;   // the same template at another output size (get_template(t, size))
};

struct FaceTemplates {
  std::map<std::string, FaceTemplate> templates;
  std::map<std::string, std::string> tasks;    // task -> template name
  const FaceTemplate& get(const std::string& name_or_task) const;   // throws naming the known ones
};
// Read the templates JSON written by cpp/tools/face_templates.py; errors name the file and key.
FaceTemplates loadFaceTemplates(const std::string& path);

struct Face {
  cv::Rect2d box;                 // x0, y0, x1 = x + width, y1 = y + height (dlib's right/bottom, as Python's Face.box)
  double score = 0;
  std::vector<cv::Point2f> landmarks;   // 68 iBUG points, empty when not predicted
};

// (5, 2) eye centres, nose tip, mouth corners (facelab.face.align.five_points)
std::vector<cv::Point2f> fivePoints(const std::vector<cv::Point2f>& landmarks68);

// Where the shape predictor is: the config's face.shape_predictor, else $FACELAB_FACE_MODELS (folder or file), else
// /usr/share/dlib/shape_predictor_68_face_landmarks.dat; throws naming every place tried.
std::string findShapePredictor(const std::string& configured = "");

class FaceFrontEnd {
 public:
  explicit FaceFrontEnd(const FaceConfig& cfg);
  ~FaceFrontEnd();
  FaceFrontEnd(const FaceFrontEnd&) = delete;
  FaceFrontEnd& operator=(const FaceFrontEnd&) = delete;

  // Faces in an 8-bit BGR (or grey) image, largest first, with 68 landmarks (FaceDetector('hog').__call__).
  std::vector<Face> detect(const cv::Mat& bgr) const;
  std::vector<Face> boxes(const cv::Mat& bgr) const;
  std::vector<cv::Point2f> landmarks(const cv::Mat& bgr, const cv::Rect2d& box) const;

  // 2x3 CV_64F matrix from image pixels to the template's aligned image (align_matrix); empty landmarks: the box.
  cv::Mat alignMatrix(const Face& face, const FaceTemplate& t) const;
  // The aligned crop (align_face), 8-bit BGR (grey for grey templates).
  cv::Mat align(const cv::Mat& bgr, const Face& face, const FaceTemplate& t) const;
  const FaceTemplates& templates() const { return templates_; }
  const FaceConfig& config() const { return cfg_; }
  const std::string& shapePredictorPath() const { return sp_path_; }

 private:
  struct Impl;
  FaceConfig cfg_;
  FaceTemplates templates_;
  std::string sp_path_;
  std::unique_ptr<Impl> impl_;
};

std::vector<cv::Point2f> transformPoints(const std::vector<cv::Point2f>& pts, const cv::Mat& M);

}  // namespace facelab
